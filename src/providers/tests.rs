//! Framework tests: the normalised request view and the OpenAI output builders.
