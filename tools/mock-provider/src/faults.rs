//! Upstream faults for tollgate's fault matrix (`tests/e2e/test_faults.py`).
//!
//! `x-mock-fault: <fault>` on a request makes the mock answer it the way a broken
//! or unusual provider would. The reply itself is the normal one for the request
//! (so a stream is a real stream, usage included); the fault changes how it is
//! delivered:
//!
//!   reset-after-bytes=N  send the first N bytes of the response (head included),
//!                        then reset the connection (TCP RST)
//!   stall                read the request, answer nothing; wait (at most 60 s)
//!                        until the peer gives up
//!   stall-after-bytes=N  send N bytes, then stall the same way
//!   truncate             declare the full length, send half the body, close
//!   truncate-json        a well-framed response whose JSON body is cut in half
//!   gzip                 `content-encoding: gzip` body (streams too: one gzip body)
//!   chunked              a non-streaming reply sent with `transfer-encoding:
//!                        chunked` (no length) in 64 KiB pieces
//!   pad-bytes=N          non-streaming JSON padded to about N bytes with an
//!                        extra `"x_mock_padding"` member, written in 64 KiB pieces
//!                        (N up to 1 GiB)
//!
//! Every fault ends the connection afterwards, except `gzip`, `truncate-json`,
//! `chunked` and `pad-bytes`, which are well-formed responses.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::Reply;
use crate::http::{self, Request};

/// Longest a stalled answer waits for the peer to give up.
const STALL_MAX: Duration = Duration::from_secs(60);
const MAX_PAD: usize = 1 << 30;

/// A fault requested by `x-mock-fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ResetAfterBytes(usize),
    Stall,
    StallAfterBytes(usize),
    Truncate,
    TruncateJson,
    Gzip,
    Chunked,
    PadBytes(usize),
}

impl Fault {
    /// The fault named in the request, if any (an unknown one is ignored).
    pub fn of(req: &Request) -> Option<Fault> {
        let v = req.header("x-mock-fault")?.trim().to_ascii_lowercase();
        let (name, arg) = match v.split_once('=') {
            Some((n, a)) => (n.trim().to_string(), a.trim().parse::<usize>().ok()),
            None => (v.clone(), None),
        };
        Some(match (name.as_str(), arg) {
            ("reset-after-bytes", Some(n)) => Fault::ResetAfterBytes(n),
            ("stall", _) => Fault::Stall,
            ("stall-after-bytes", Some(n)) => Fault::StallAfterBytes(n),
            ("truncate", _) => Fault::Truncate,
            ("truncate-json", _) => Fault::TruncateJson,
            ("gzip", _) => Fault::Gzip,
            ("chunked", _) => Fault::Chunked,
            ("pad-bytes", Some(n)) => Fault::PadBytes(n.min(MAX_PAD)),
            _ => return None,
        })
    }
}

/// The hook `serve_one` calls: `None` when the request asks for no fault (serve
/// normally), else the outcome of serving `reply` with the fault (an `Err` closes
/// the connection).
pub fn serve(req: &Request, reply: &Reply, w: &mut TcpStream) -> Option<io::Result<()>> {
    let fault = Fault::of(req)?;
    Some(apply(fault, reply, w))
}

fn apply(fault: Fault, reply: &Reply, w: &mut TcpStream) -> io::Result<()> {
    match fault {
        Fault::ResetAfterBytes(n) => {
            let bytes = render(reply)?;
            w.write_all(bytes.get(..n).unwrap_or(&bytes))?;
            w.flush()?;
            // Let the bytes leave before the RST overtakes them.
            std::thread::sleep(Duration::from_millis(50));
            reset(w);
            Err(io::Error::other("reset"))
        }
        Fault::Stall => {
            stall(w);
            Err(io::Error::other("stalled"))
        }
        Fault::StallAfterBytes(n) => {
            let bytes = render(reply)?;
            w.write_all(bytes.get(..n).unwrap_or(&bytes))?;
            w.flush()?;
            stall(w);
            Err(io::Error::other("stalled"))
        }
        Fault::Truncate => {
            let (status, headers, body) = flatten(reply);
            let mut out = Vec::new();
            http::write_full(&mut out, status, &headers, &body, false, false)?;
            let head_len = out.len() - body.len();
            w.write_all(&out[..head_len + body.len() / 2])?;
            w.flush()?;
            let _ = w.shutdown(std::net::Shutdown::Both);
            Err(io::Error::other("truncated"))
        }
        Fault::TruncateJson => {
            let (status, headers, body) = flatten(reply);
            http::write_full(w, status, &headers, &body[..body.len() / 2], true, false)
        }
        Fault::Gzip => {
            let (status, mut headers, body) = flatten(reply);
            headers.push(("content-encoding".into(), "gzip".into()));
            http::write_full(w, status, &headers, &gzip_stored(&body), true, false)
        }
        Fault::Chunked => {
            let (status, headers, body) = flatten(reply);
            let pieces: Vec<&[u8]> = body.chunks(64 * 1024).collect();
            http::write_chunks(w, status, &headers, &pieces, Duration::ZERO, true)
        }
        Fault::PadBytes(n) => pad(reply, n, w),
    }
}

/// The whole response as the mock would have sent it (streams with chunked framing).
fn render(reply: &Reply) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => http::write_full(&mut out, *status, headers, body.as_bytes(), false, false)?,
        Reply::Stream { headers, events } => {
            http::write_stream(&mut out, 200, headers, events, Duration::ZERO, false)?
        }
    }
    Ok(out)
}

/// Status, headers and the whole body (a stream's events concatenated).
fn flatten(reply: &Reply) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (*status, headers.clone(), body.as_bytes().to_vec()),
        Reply::Stream { headers, events } => (200, headers.clone(), events.concat().into_bytes()),
    }
}

/// Wait until the peer closes (or `STALL_MAX`), answering nothing.
fn stall(w: &mut TcpStream) {
    let _ = w.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < STALL_MAX {
        match w.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Close with a TCP RST (SO_LINGER 0) rather than a FIN.
fn reset(w: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct Linger {
            onoff: i32,
            linger: i32,
        }
        extern "C" {
            fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
        }
        const SOL_SOCKET: i32 = 1;
        const SO_LINGER: i32 = 13;
        let l = Linger {
            onoff: 1,
            linger: 0,
        };
        // SAFETY: a valid fd owned by `w` and a correctly sized `struct linger`.
        unsafe {
            setsockopt(
                w.as_raw_fd(),
                SOL_SOCKET,
                SO_LINGER,
                &l,
                std::mem::size_of::<Linger>() as u32,
            );
        }
    }
    let _ = w.shutdown(std::net::Shutdown::Both);
}

/// A JSON reply with an `"x_mock_padding"` member making it about `n` bytes,
/// written in pieces so the mock never holds it whole.
fn pad(reply: &Reply, n: usize, w: &mut TcpStream) -> io::Result<()> {
    let (status, headers, body) = flatten(reply);
    let Some(rest) = body.strip_prefix(b"{") else {
        return http::write_full(w, status, &headers, &body, true, false);
    };
    let open = b"{\"x_mock_padding\":\"";
    let close = b"\",";
    let fill = n.saturating_sub(body.len() + open.len() + close.len());
    let total = open.len() + fill + close.len() + rest.len();
    let mut head = Vec::new();
    http::write_full(&mut head, status, &headers, &[], true, true)?;
    // write_full with head_only wrote `content-length: 0`; put the real length in.
    let head = String::from_utf8_lossy(&head).replace(
        "content-length: 0\r\n",
        &format!("content-length: {total}\r\n"),
    );
    w.write_all(head.as_bytes())?;
    w.write_all(open)?;
    let piece = vec![b'a'; 64 * 1024];
    let mut left = fill;
    while left > 0 {
        let k = left.min(piece.len());
        w.write_all(&piece[..k])?;
        left -= k;
    }
    w.write_all(close)?;
    w.write_all(rest)?;
    w.flush()
}

/// gzip (RFC 1952) of `data` with stored (uncompressed) deflate blocks: a valid
/// gzip body any client can inflate, with no compression library.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        // The CRC-32 (IEEE) check value of "123456789".
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_framing() {
        let data = vec![b'x'; 70_000];
        let g = gzip_stored(&data);
        assert_eq!(&g[..3], &[0x1f, 0x8b, 8]);
        // Two stored blocks (65535 + 4465 bytes), 5 header bytes each, + 10 + 8.
        assert_eq!(g.len(), data.len() + 10 + 2 * 5 + 8);
        assert_eq!(&g[g.len() - 4..], &70_000u32.to_le_bytes());
        assert_eq!(gzip_stored(b"").len(), 10 + 5 + 8);
    }

    #[test]
    fn fault_names() {
        let req = |v: &str| Request {
            method: "POST".into(),
            target: "/v1/chat/completions".into(),
            version: "HTTP/1.1".into(),
            headers: vec![("x-mock-fault".into(), v.into())],
            body: Vec::new(),
        };
        assert_eq!(
            Fault::of(&req("reset-after-bytes=300")),
            Some(Fault::ResetAfterBytes(300))
        );
        assert_eq!(Fault::of(&req(" GZIP ")), Some(Fault::Gzip));
        assert_eq!(Fault::of(&req("pad-bytes=9")), Some(Fault::PadBytes(9)));
        assert_eq!(Fault::of(&req("chunked")), Some(Fault::Chunked));
        assert_eq!(Fault::of(&req("reset-after-bytes")), None);
        assert_eq!(Fault::of(&req("nonsense")), None);
    }
}
