//! Image prompt tokens: OpenAI's published per-model image pricing, and the image
//! dimensions read from a `data:` URL without decoding the whole image.
//!
//! Only the first bytes of the base64 payload are ever decoded (random access into
//! the base64 text, no buffer), so a 20 MB inline image costs a few hundred byte
//! reads. Remote URLs cannot be sized without fetching them, which a filter must not
//! do: callers fall back to a configured estimate and label the count as estimated.

/// How a model prices an image, from OpenAI's vision docs ("Calculating costs").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePricing {
    /// gpt-4o, gpt-4.1, gpt-5, o1/o3 …: `base` plus `per_tile` for each 512-px tile
    /// after fitting into 2048×2048 and scaling the shortest side to 768.
    Tiles {
        /// Flat tokens per image.
        base: u32,
        /// Tokens per 512-px tile.
        per_tile: u32,
    },
    /// gpt-4.1-mini/nano, o4-mini, gpt-5-mini/nano: 32-px patches (capped at 1536)
    /// times a per-model multiplier, in thousandths to stay integer.
    Patches {
        /// Tokens per patch, times 1000.
        multiplier_milli: u32,
    },
    /// No published rule for this model: callers use their configured estimate.
    Unknown,
}

/// The `detail` a client asked for; `low` is a flat price on tile models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// A flat price, whatever the size.
    Low,
    /// Priced by size.
    High,
    /// The provider's default, priced as `high`.
    Auto,
}

impl Detail {
    /// Unknown strings mean `auto`, which is what OpenAI does with a missing field.
    pub fn parse(s: Option<&str>) -> Detail {
        match s {
            Some("low") => Detail::Low,
            Some("high") => Detail::High,
            _ => Detail::Auto,
        }
    }
}

/// Most patches a patch-priced image is billed for.
const MAX_PATCHES: u64 = 1536;
const PATCH: u64 = 32;

/// Prompt tokens for one `width`×`height` image, or `None` when the pricing is unknown.
///
/// Patch models ignore `detail` (measured by the community; the docs only describe
/// the patch path for them). Multiplied patch counts round up: a 16×16 PNG on
/// gpt-5-nano (1 patch × 2.46) was billed 3 tokens in `chat-image-to-text`.
pub fn image_tokens(pricing: ImagePricing, width: u32, height: u32, detail: Detail) -> Option<u64> {
    match pricing {
        ImagePricing::Unknown => None,
        ImagePricing::Tiles { base, per_tile } => {
            if detail == Detail::Low {
                return Some(u64::from(base));
            }
            let tiles = tile_count(width, height);
            Some(u64::from(base).saturating_add(u64::from(per_tile).saturating_mul(tiles)))
        }
        ImagePricing::Patches { multiplier_milli } => {
            let patches = patch_count(width, height);
            let milli = patches.saturating_mul(u64::from(multiplier_milli));
            Some(milli.div_ceil(1000))
        }
    }
}

/// 512-px tiles after OpenAI's two downscales (never upscales).
fn tile_count(width: u32, height: u32) -> u64 {
    let (mut w, mut h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    if w > 2048.0 || h > 2048.0 {
        let s = 2048.0 / w.max(h);
        w *= s;
        h *= s;
    }
    let short = w.min(h);
    if short > 768.0 {
        let s = 768.0 / short;
        w *= s;
        h *= s;
    }
    let tw = (w / 512.0).ceil().max(1.0) as u64;
    let th = (h / 512.0).ceil().max(1.0) as u64;
    tw.saturating_mul(th)
}

/// 32-px patches, with OpenAI's documented shrink when above the cap.
fn patch_count(width: u32, height: u32) -> u64 {
    let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
    let raw = w.div_ceil(PATCH).saturating_mul(h.div_ceil(PATCH));
    if raw <= MAX_PATCHES {
        return raw;
    }
    let (wf, hf) = (w as f64, h as f64);
    let shrink = ((PATCH * PATCH * MAX_PATCHES) as f64 / (wf * hf)).sqrt();
    let pw = wf * shrink / PATCH as f64;
    let ph = hf * shrink / PATCH as f64;
    let adjust = (pw.floor() / pw).min(ph.floor() / ph);
    let s = shrink * adjust;
    // The shrink is chosen to land on whole patches; keep float noise from adding one.
    let rw = ((wf * s) / PATCH as f64 - 1e-9).ceil().max(1.0) as u64;
    let rh = ((hf * s) / PATCH as f64 - 1e-9).ceil().max(1.0) as u64;
    rw.saturating_mul(rh).min(MAX_PATCHES)
}

/// Width and height of a base64 `data:` URL image (PNG, JPEG, GIF, WebP), or `None`
/// for remote URLs, other formats, or anything malformed.
pub fn data_url_dimensions(url: &str) -> Option<(u32, u32)> {
    let rest = url.strip_prefix("data:")?;
    let comma = rest.find(',')?;
    let (meta, payload) = rest.split_at(comma);
    if !meta.ends_with(";base64") {
        return None;
    }
    let payload = payload.get(1..)?;
    dimensions(&B64 {
        text: payload.as_bytes(),
    })
}

/// Width and height from raw (already decoded) image bytes.
pub fn bytes_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    dimensions(&bytes)
}

/// Random access to image bytes, so headers can be read from base64 without a buffer.
trait ByteSource {
    fn at(&self, i: usize) -> Option<u8>;
    fn be16(&self, i: usize) -> Option<u32> {
        Some((u32::from(self.at(i)?) << 8) | u32::from(self.at(i + 1)?))
    }
    fn le16(&self, i: usize) -> Option<u32> {
        Some(u32::from(self.at(i)?) | (u32::from(self.at(i + 1)?) << 8))
    }
    fn le24(&self, i: usize) -> Option<u32> {
        Some(self.le16(i)? | (u32::from(self.at(i + 2)?) << 16))
    }
    fn be32(&self, i: usize) -> Option<u32> {
        Some((self.be16(i)? << 16) | self.be16(i + 2)?)
    }
    fn starts_with(&self, at: usize, sig: &[u8]) -> bool {
        sig.iter()
            .enumerate()
            .all(|(k, b)| self.at(at + k) == Some(*b))
    }
}

impl ByteSource for &[u8] {
    fn at(&self, i: usize) -> Option<u8> {
        self.get(i).copied()
    }
}

/// Standard or URL-safe base64 text, decoded one byte at a time on demand.
/// Whitespace inside the payload is not supported (it makes positions non-linear);
/// such images simply get no dimensions and fall back to the estimate.
struct B64<'a> {
    text: &'a [u8],
}

fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

impl ByteSource for B64<'_> {
    fn at(&self, i: usize) -> Option<u8> {
        let group = i / 3;
        let start = group.checked_mul(4)?;
        let chunk = self
            .text
            .get(start..start.checked_add(4)?.min(self.text.len()))?;
        let mut acc: u32 = 0;
        let mut have = 0usize;
        for &c in chunk {
            if c == b'=' {
                break;
            }
            acc = (acc << 6) | b64_value(c)?;
            have += 1;
        }
        // `have` sextets carry have*6/8 whole bytes.
        let bytes = have * 6 / 8;
        let k = i % 3;
        if k >= bytes {
            return None;
        }
        acc <<= 6 * (4 - have as u32);
        Some(((acc >> (16 - 8 * k as u32)) & 0xff) as u8)
    }
}

/// JPEG segments walked before giving up (EXIF/ICC blocks come before SOF).
const MAX_JPEG_SEGMENTS: usize = 64;

fn dimensions(src: &dyn ByteSource) -> Option<(u32, u32)> {
    let dims = if src.starts_with(0, b"\x89PNG\r\n\x1a\n") {
        // IHDR is always the first chunk: width, height big-endian at 16 and 20.
        (src.be32(16)?, src.be32(20)?)
    } else if src.starts_with(0, b"GIF87a") || src.starts_with(0, b"GIF89a") {
        (src.le16(6)?, src.le16(8)?)
    } else if src.starts_with(0, b"RIFF") && src.starts_with(8, b"WEBP") {
        webp(src)?
    } else if src.starts_with(0, &[0xff, 0xd8]) {
        jpeg(src)?
    } else {
        return None;
    };
    (dims.0 > 0 && dims.1 > 0).then_some(dims)
}

fn webp(src: &dyn ByteSource) -> Option<(u32, u32)> {
    if src.starts_with(12, b"VP8X") {
        Some((src.le24(24)? + 1, src.le24(27)? + 1))
    } else if src.starts_with(12, b"VP8L") {
        let b = |k: usize| src.at(21 + k).map(u32::from);
        let (b0, b1, b2, b3) = (b(0)?, b(1)?, b(2)?, b(3)?);
        let w = 1 + (((b1 & 0x3f) << 8) | b0);
        let h = 1 + (((b3 & 0x0f) << 10) | (b2 << 2) | ((b1 & 0xc0) >> 6));
        Some((w, h))
    } else if src.starts_with(12, b"VP8 ") {
        Some((src.le16(26)? & 0x3fff, src.le16(28)? & 0x3fff))
    } else {
        None
    }
}

fn jpeg(src: &dyn ByteSource) -> Option<(u32, u32)> {
    let mut i = 2usize;
    for _ in 0..MAX_JPEG_SEGMENTS {
        // Skip fill bytes before a marker.
        while src.at(i)? == 0xff && src.at(i + 1)? == 0xff {
            i += 1;
        }
        if src.at(i)? != 0xff {
            return None;
        }
        let marker = src.at(i + 1)?;
        // Standalone markers carry no length.
        if marker == 0x01 || (0xd0..=0xd7).contains(&marker) {
            i += 2;
            continue;
        }
        let len = src.be16(i + 2)? as usize;
        let is_sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_sof {
            return Some((src.be16(i + 7)?, src.be16(i + 5)?));
        }
        if len < 2 {
            return None;
        }
        i = i.checked_add(2 + len)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for k in 0..4 {
                if k <= c.len() {
                    out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_random_access_matches_bytes() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in [0usize, 1, 2, 3, 4, 5, 100, 256] {
            let text = b64(&data[..len]);
            let src = B64 {
                text: text.as_bytes(),
            };
            for i in 0..len + 3 {
                assert_eq!(src.at(i), data[..len].get(i).copied(), "len {len} i {i}");
            }
        }
    }

    #[test]
    fn recorded_png_is_16x16() {
        let url = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAAXElEQVR42mNgoAkofv8fBVOkmQyD/sPwn1UlYAzlE6cZpgGmGZlPkgHYDCHKCcia0AwgHlCm+c+f/9gwabajG0CsK+DOxmIA8YZQ6gXkhISG6W8ALj7RtuMTgwMA0WTdqiU1ensAAAAASUVORK5CYII=";
        assert_eq!(data_url_dimensions(url), Some((16, 16)));
    }

    #[test]
    fn headers() {
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[0x20, 0x03, 0x58, 0x02]);
        assert_eq!(bytes_dimensions(&gif), Some((800, 600)));

        // SOI, APP0 (len 16), SOF0 with height 480 width 640.
        let mut jpg = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
        jpg.extend_from_slice(&[0; 14]);
        jpg.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 0x08, 0x01, 0xe0, 0x02, 0x80]);
        assert_eq!(bytes_dimensions(&jpg), Some((640, 480)));
        let url = format!("data:image/jpeg;base64,{}", b64(&jpg));
        assert_eq!(data_url_dimensions(&url), Some((640, 480)));

        let mut webp = b"RIFF\0\0\0\0WEBPVP8X".to_vec();
        webp.extend_from_slice(&[0; 8]);
        webp.extend_from_slice(&[0x1f, 0x03, 0x00, 0x57, 0x02, 0x00]);
        assert_eq!(bytes_dimensions(&webp), Some((800, 600)));
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "data:",
            "data:image/png;base64,",
            "data:image/png;base64,iVBORw0KGgo",
            "data:image/jpeg;base64,/9j/",
            "data:image/jpeg;base64,/9j/////////////",
            "data:image/png;base64,%%%%",
            "https://example.com/a.png",
        ] {
            let _ = data_url_dimensions(s);
        }
        for n in 0..64u8 {
            let v: Vec<u8> = (0..n).map(|k| k.wrapping_mul(37) ^ 0xff).collect();
            let _ = bytes_dimensions(&v);
        }
    }

    #[test]
    fn published_examples() {
        let t = ImagePricing::Tiles {
            base: 85,
            per_tile: 170,
        };
        assert_eq!(image_tokens(t, 1024, 1024, Detail::High), Some(765));
        assert_eq!(image_tokens(t, 2048, 4096, Detail::High), Some(1105));
        assert_eq!(image_tokens(t, 4096, 8192, Detail::Low), Some(85));
        let p = ImagePricing::Patches {
            multiplier_milli: 1000,
        };
        assert_eq!(image_tokens(p, 1024, 1024, Detail::Auto), Some(1024));
        assert_eq!(image_tokens(p, 1800, 2400, Detail::Auto), Some(1452));
        let nano = ImagePricing::Patches {
            multiplier_milli: 2460,
        };
        assert_eq!(image_tokens(nano, 16, 16, Detail::Auto), Some(3));
        assert_eq!(
            image_tokens(ImagePricing::Unknown, 1, 1, Detail::Auto),
            None
        );
        assert_eq!(image_tokens(t, 0, 0, Detail::High), Some(255));
    }
}
