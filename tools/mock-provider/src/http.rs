//! Minimal HTTP/1.1: request parsing (Content-Length and chunked bodies,
//! keep-alive) and response writing (fixed-length, or chunked with a flush
//! per event).

use std::io::{self, BufRead, Read, Write};

pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent, query string included.
    pub target: String,
    pub version: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            conn.split(',').any(|t| t.trim() == "keep-alive")
        } else {
            !conn.split(',').any(|t| t.trim() == "close")
        }
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before sending anything.
    Closed,
    Io(#[allow(dead_code)] io::Error),
    /// Malformed request: answer with this status and close.
    Bad(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let limit = (*budget as u64).saturating_add(1);
    let n = r.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(ReadError::Bad(431, "request head too large".into()));
    }
    *budget -= n;
    if buf.last() != Some(&b'\n') {
        return Err(ReadError::Bad(400, "truncated request line".into()));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8".into()))
}

/// Reads one request. `Err(Closed)` on a clean close between requests.
pub fn read_request<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> Result<Request, ReadError> {
    let mut budget = MAX_HEAD;
    // Tolerate empty lines before the request line (RFC 9112 2.2).
    let line = loop {
        match read_line(r, &mut budget)? {
            None => return Err(ReadError::Closed),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(ReadError::Bad(400, "malformed request line".into())),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Bad(505, "HTTP version not supported".into()));
    }
    let mut headers = Vec::new();
    loop {
        let l = match read_line(r, &mut budget)? {
            None => return Err(ReadError::Bad(400, "connection closed in headers".into())),
            Some(l) => l,
        };
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line".into()));
        };
        if k.is_empty() || k.contains(' ') {
            return Err(ReadError::Bad(400, "malformed header name".into()));
        }
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        req.body = read_chunked(r)?;
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| ReadError::Bad(400, "invalid content-length".into()))?;
        if n > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large".into()));
        }
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(req)
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut budget = 4096;
        let line = read_line(r, &mut budget)?
            .ok_or_else(|| ReadError::Bad(400, "connection closed in chunked body".into()))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Bad(400, "invalid chunk size".into()))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut budget = MAX_HEAD;
            loop {
                match read_line(r, &mut budget)? {
                    None => break,
                    Some(l) if l.is_empty() => break,
                    Some(_) => {}
                }
            }
            return Ok(body);
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(ReadError::Bad(413, "request body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(ReadError::Bad(400, "chunk not followed by CRLF".into()));
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn head(status: u16, headers: &[(String, String)], keep_alive: bool, framing: &str) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {} {}\r\n", status, reason(status));
    for (k, v) in headers {
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    h.push_str(framing);
    h.push_str("\r\n");
    if !keep_alive {
        h.push_str("connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

pub fn write_full<W: Write>(
    w: &mut W,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = head(
        status,
        headers,
        keep_alive,
        &format!("content-length: {}", body.len()),
    );
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

/// Streams `events` as one HTTP chunk each, flushing after each and sleeping
/// `delay` between them.
pub fn write_stream<W: Write>(
    w: &mut W,
    status: u16,
    headers: &[(String, String)],
    events: &[String],
    delay: std::time::Duration,
    keep_alive: bool,
) -> io::Result<()> {
    write_chunks(w, status, headers, events, delay, keep_alive)
}

/// [`write_stream`] for any byte events (Bedrock's binary eventstream frames).
pub fn write_chunks<W: Write, E: AsRef<[u8]>>(
    w: &mut W,
    status: u16,
    headers: &[(String, String)],
    events: &[E],
    delay: std::time::Duration,
    keep_alive: bool,
) -> io::Result<()> {
    w.write_all(&head(
        status,
        headers,
        keep_alive,
        "transfer-encoding: chunked",
    ))?;
    w.flush()?;
    for (i, ev) in events.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let ev = ev.as_ref();
        if ev.is_empty() {
            continue;
        }
        write!(w, "{:x}\r\n", ev.len())?;
        w.write_all(ev)?;
        w.write_all(b"\r\n")?;
        w.flush()?;
    }
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        let mut r = BufReader::new(raw);
        let mut sink = Vec::new();
        read_request(&mut r, &mut sink)
    }

    #[test]
    fn content_length_and_keepalive() {
        let req =
            parse(b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(req.path(), "/v1/x");
        assert_eq!(req.header("host"), Some("h"));
        assert_eq!(req.body, b"{}");
        assert!(req.keep_alive());
    }

    #[test]
    fn chunked_body() {
        let req = parse(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.body, b"abcde");
        assert!(!req.keep_alive());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nno-colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: zz\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        ] {
            assert!(parse(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
        assert!(matches!(parse(b""), Err(ReadError::Closed)));
    }

    #[test]
    fn stream_framing() {
        let mut out = Vec::new();
        write_stream(
            &mut out,
            200,
            &[("content-type".into(), "text/event-stream".into())],
            &["data: a\n\n".into(), "data: [DONE]\n\n".into()],
            std::time::Duration::ZERO,
            true,
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        );
        assert!(s.ends_with("9\r\ndata: a\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"));
    }
}
