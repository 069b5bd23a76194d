//! Incremental decoder for AWS `application/vnd.amazon.eventstream` frames.
//!
//! Bedrock's ConverseStream answers with binary frames, not SSE:
//!
//! ```text
//! [total length u32][headers length u32][prelude CRC u32]
//! [headers ...][payload ...][message CRC u32]
//! ```
//!
//! all big-endian, the prelude CRC covering the first 8 bytes and the message CRC
//! covering everything before it (CRC-32/IEEE, [`crate::crypto::crc32`]). A header is
//! `[name length u8][name][type u8][value]`, the value's encoding set by its type.
//!
//! A gateway sees the stream as arbitrary chunks, so the decoder keeps only the
//! bytes of the frame in progress, never more than `max_frame` (a frame that
//! announces more is rejected from its prelude, before its bytes arrive), and
//! looks at each byte once when the frame completes. A CRC mismatch or a malformed
//! header is an error that poisons the decoder: once framing is lost nothing after
//! it can be trusted.

use crate::crypto::{crc32, crc32_update};

/// The smallest valid frame: prelude (12) plus message CRC (4), nothing else.
const MIN_FRAME: usize = 16;
/// Prelude length: total length, headers length, prelude CRC.
const PRELUDE: usize = 12;

/// Default cap on one frame. AWS caps frames at 16 MiB; Bedrock's events are a few
/// hundred bytes, so 1 MiB keeps a hostile upstream from making the filter buffer
/// much while leaving room for a large tool-call argument.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a stream cannot be decoded. Every variant names what was wrong and where
/// (the frame's byte offset in the stream), so a log line is enough to diagnose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The prelude CRC does not match its 8 bytes: the stream is corrupt or not
    /// an eventstream at all.
    PreludeCrc {
        /// Offset of the frame in the stream.
        offset: u64,
        /// CRC carried by the frame.
        expected: u32,
        /// CRC computed over the prelude.
        actual: u32,
    },
    /// The message CRC does not match the frame's bytes.
    MessageCrc {
        /// Offset of the frame in the stream.
        offset: u64,
        /// CRC carried by the frame.
        expected: u32,
        /// CRC computed over the frame.
        actual: u32,
    },
    /// The prelude announces a length below the 16-byte minimum, or headers that
    /// do not fit in the frame.
    BadLength {
        /// Offset of the frame in the stream.
        offset: u64,
        /// Announced total length.
        total: u32,
        /// Announced headers length.
        headers: u32,
    },
    /// The frame is larger than the configured cap.
    TooLarge {
        /// Offset of the frame in the stream.
        offset: u64,
        /// Announced total length.
        total: u32,
        /// The cap.
        max: usize,
    },
    /// A header could not be parsed (truncated, unknown type, non-UTF-8 name or string).
    BadHeader {
        /// Offset of the frame in the stream.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Offset of the unfinished frame.
        offset: u64,
        /// Bytes of it received.
        have: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::PreludeCrc {
                offset,
                expected,
                actual,
            } => write!(
                f,
                "eventstream frame at byte {offset}: prelude CRC mismatch (frame says {expected:#010x}, computed {actual:#010x})"
            ),
            FrameError::MessageCrc {
                offset,
                expected,
                actual,
            } => write!(
                f,
                "eventstream frame at byte {offset}: message CRC mismatch (frame says {expected:#010x}, computed {actual:#010x})"
            ),
            FrameError::BadLength {
                offset,
                total,
                headers,
            } => write!(
                f,
                "eventstream frame at byte {offset}: invalid lengths (total {total}, headers {headers})"
            ),
            FrameError::TooLarge { offset, total, max } => write!(
                f,
                "eventstream frame at byte {offset}: {total} bytes exceeds the {max}-byte limit"
            ),
            FrameError::BadHeader { offset, reason } => {
                write!(f, "eventstream frame at byte {offset}: bad header: {reason}")
            }
            FrameError::Truncated { offset, have } => write!(
                f,
                "eventstream ended inside the frame at byte {offset} ({have} bytes received)"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// A typed header value, as the eventstream encoding defines them (types 0–9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6: length-prefixed bytes.
    Bytes(Vec<u8>),
    /// Type 7: length-prefixed UTF-8.
    String(String),
    /// Type 8: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Type 9: 16 bytes.
    Uuid([u8; 16]),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// The payload (JSON for Bedrock).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The string value of header `name`, if present and a string. Bedrock routes
    /// on `:message-type`, `:event-type` and `:exception-type`.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(k, v)| match v {
            HeaderValue::String(s) if k == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Incremental frame decoder; see the module docs.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Total length of the frame being collected, once its prelude is checked.
    want: Option<usize>,
    /// Stream offset of the frame being collected.
    offset: u64,
    max_frame: usize,
    failed: Option<FrameError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

impl Decoder {
    /// A decoder rejecting frames larger than `max_frame` bytes (at least 16).
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            want: None,
            offset: 0,
            max_frame: max_frame.max(MIN_FRAME),
            failed: None,
        }
    }

    /// Feed one chunk and call `on_frame` for every frame it completes, in order.
    /// Stops at the first error and returns it; later calls return it again.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        mut on_frame: impl FnMut(Frame),
    ) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !chunk.is_empty() {
            let need = self.want.unwrap_or(PRELUDE);
            let take = need.saturating_sub(self.buf.len()).min(chunk.len());
            let (head, rest) = chunk.split_at(take);
            self.buf.extend_from_slice(head);
            chunk = rest;
            if self.buf.len() < need {
                break;
            }
            let step = match self.want {
                None => self.check_prelude(),
                Some(_) => self.finish_frame().map(|f| {
                    on_frame(f);
                }),
            };
            if let Err(e) = step {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Call at the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                offset: self.offset,
                have: self.buf.len(),
            })
        }
    }

    /// Bytes held for the frame in progress (bounded by the frame cap).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn check_prelude(&mut self) -> Result<(), FrameError> {
        let offset = self.offset;
        let (Some(total), Some(headers), Some(crc)) =
            (be32(&self.buf, 0), be32(&self.buf, 4), be32(&self.buf, 8))
        else {
            return Err(FrameError::Truncated {
                offset,
                have: self.buf.len(),
            });
        };
        let actual = crc32(self.buf.get(..8).unwrap_or_default());
        if actual != crc {
            return Err(FrameError::PreludeCrc {
                offset,
                expected: crc,
                actual,
            });
        }
        let total_len = total as usize;
        if total_len < MIN_FRAME || (headers as usize) > total_len - MIN_FRAME {
            return Err(FrameError::BadLength {
                offset,
                total,
                headers,
            });
        }
        if total_len > self.max_frame {
            return Err(FrameError::TooLarge {
                offset,
                total,
                max: self.max_frame,
            });
        }
        self.buf.reserve_exact(total_len - self.buf.len());
        self.want = Some(total_len);
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<Frame, FrameError> {
        let offset = self.offset;
        let buf = std::mem::take(&mut self.buf);
        self.want = None;
        self.offset = offset.saturating_add(buf.len() as u64);
        let body_end = buf.len().saturating_sub(4);
        let expected = be32(&buf, body_end).unwrap_or_default();
        let (Some(prelude), Some(body)) = (buf.get(..PRELUDE), buf.get(PRELUDE..body_end)) else {
            return Err(FrameError::Truncated {
                offset,
                have: buf.len(),
            });
        };
        let actual = crc32_update(crc32(prelude), body);
        if actual != expected {
            return Err(FrameError::MessageCrc {
                offset,
                expected,
                actual,
            });
        }
        let headers_len = be32(&buf, 4).unwrap_or_default() as usize;
        let (hdr, payload) = body.split_at(headers_len.min(body.len()));
        let headers =
            parse_headers(hdr).map_err(|reason| FrameError::BadHeader { offset, reason })?;
        Ok(Frame {
            headers,
            payload: payload.to_vec(),
        })
    }
}

/// Take `n` bytes off the front of `b`.
fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
    if b.len() < n {
        return Err(what);
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_n<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], &'static str> {
    let s = take(b, N, "header value truncated")?;
    let mut out = [0u8; N];
    out.copy_from_slice(s);
    Ok(out)
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, &'static str> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let [name_len] = take_n::<1>(&mut b).map_err(|_| "header name length truncated")?;
        if name_len == 0 {
            return Err("empty header name");
        }
        let name = take(&mut b, usize::from(name_len), "header name truncated")?;
        let name = std::str::from_utf8(name).map_err(|_| "header name is not UTF-8")?;
        let [ty] = take_n::<1>(&mut b).map_err(|_| "header type truncated")?;
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(take_n(&mut b)?)),
            3 => HeaderValue::Short(i16::from_be_bytes(take_n(&mut b)?)),
            4 => HeaderValue::Int(i32::from_be_bytes(take_n(&mut b)?)),
            5 => HeaderValue::Long(i64::from_be_bytes(take_n(&mut b)?)),
            6 | 7 => {
                let len = u16::from_be_bytes(take_n(&mut b)?);
                let v = take(&mut b, usize::from(len), "header value truncated")?;
                if ty == 6 {
                    HeaderValue::Bytes(v.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(v)
                            .map_err(|_| "string header value is not UTF-8")?
                            .to_owned(),
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(take_n(&mut b)?)),
            9 => HeaderValue::Uuid(take_n(&mut b)?),
            _ => return Err("unknown header value type"),
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// Encode one frame. The mock provider and the tests build streams with it; the
/// tests also check it against an encoder written independently in the test.
pub fn encode(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut hdr = Vec::new();
    for (name, value) in headers {
        let name = name.as_bytes();
        let name = name.get(..255).unwrap_or(name);
        hdr.push(name.len() as u8);
        hdr.extend_from_slice(name);
        match value {
            HeaderValue::Bool(true) => hdr.push(0),
            HeaderValue::Bool(false) => hdr.push(1),
            HeaderValue::Byte(v) => {
                hdr.push(2);
                hdr.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                hdr.push(3);
                hdr.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int(v) => {
                hdr.push(4);
                hdr.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                hdr.push(5);
                hdr.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => {
                let v = v.get(..usize::from(u16::MAX)).unwrap_or(v);
                hdr.push(6);
                hdr.extend_from_slice(&(v.len() as u16).to_be_bytes());
                hdr.extend_from_slice(v);
            }
            HeaderValue::String(v) => {
                let v = v.as_bytes();
                let v = v.get(..usize::from(u16::MAX)).unwrap_or(v);
                hdr.push(7);
                hdr.extend_from_slice(&(v.len() as u16).to_be_bytes());
                hdr.extend_from_slice(v);
            }
            HeaderValue::Timestamp(v) => {
                hdr.push(8);
                hdr.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                hdr.push(9);
                hdr.extend_from_slice(v);
            }
        }
    }
    let total = (PRELUDE + hdr.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(hdr.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&hdr);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock-style event frame: `:event-type`, `:content-type: application/json`,
/// `:message-type: event`, JSON payload.
pub fn event_frame(event_type: &str, json: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":event-type", HeaderValue::String(event_type.into())),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("event".into())),
        ],
        json,
    )
}

#[cfg(test)]
mod tests;
