//! Layout of the baked vocabulary tables, shared word for word by `build.rs`
//! (which writes them) and `vocab.rs` (which reads them in place), so the two
//! cannot disagree. `build.rs` includes this file with `#[path]`.

/// FNV-1a offset basis: the hash is taken byte at a time, so the hash of every
/// prefix of a string comes for free while probing for the longest token.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Multiplicative finalizer applied before taking slot bits.
pub const FINAL_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// Bits of a slot's meta word holding the rank.
pub const RANK_BITS: u32 = 18;
/// Mask of the rank bits.
pub const RANK_MASK: u32 = (1 << RANK_BITS) - 1;
/// Bits holding the token length.
pub const LEN_BITS: u32 = 7;
/// Where the Robin Hood displacement starts in the meta word.
pub const DISP_SHIFT: u32 = RANK_BITS + LEN_BITS;
/// Largest displacement the meta word can hold.
pub const MAX_DISP: usize = 127;
/// Bits of a check word holding a token's byte offset.
pub const OFFSET_BITS: u32 = 21;
/// Mask of the offset bits.
pub const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
/// An empty slot.
pub const EMPTY: u32 = u32::MAX;
