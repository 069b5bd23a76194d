//! AWS Bedrock Converse and ConverseStream: OpenAI chat requests translated to
//! Converse, signed with SigV4; answers and eventstream frames translated back.

pub mod eventstream;
pub mod sigv4;
