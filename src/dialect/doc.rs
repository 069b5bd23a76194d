//! A request body parsed once into a flat, borrowed JSON document.
//!
//! `serde_json::Value` allocates a `String` per key and string and a map per
//! object: a hostile body of 20k one-word messages cost ~100k allocations and
//! several milliseconds of a worker before a token was counted. Here the whole
//! document is one `Vec` of fixed-size entries in document order; strings borrow
//! the body unless they hold escapes (those are unescaped once into one side
//! buffer). Lookups walk siblings with skip links, so nothing is re-scanned.
//!
//! The grammar, nesting limit (128) and string rules (valid UTF-8, no raw control
//! characters, no lone surrogates) match serde_json's, so a body is accepted here
//! exactly when the provider stage's serde_json parse would accept it. Duplicate
//! keys resolve to the last one, as in serde_json.

use std::fmt;

/// Deepest nesting of arrays and objects accepted (serde_json's recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Why a body is not a JSON document, and where; shown to the client in the
/// dialect's error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What was wrong.
    pub what: &'static str,
    /// Byte offset in the body.
    pub at: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// What a node holds, for the few callers that branch on the JSON type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool,
    /// A number (kept as its source text).
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Null,
    True,
    False,
    /// `a..b` in the body text.
    Number,
    /// `a..b` in the body text (no escapes).
    Str,
    /// `a..b` in the unescaped side buffer.
    EscStr,
    /// `a` = element count, `b` = the byte after its `]`.
    Array,
    /// `a` = member count, `b` = the byte after its `}`; members are key, value,
    /// key, value … in order.
    Object,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    tag: Tag,
    a: u32,
    b: u32,
    /// Index of the entry after this one's subtree (its next sibling).
    next: u32,
    /// Byte offset in the body where the value starts.
    start: u32,
}

/// A parsed JSON document borrowing the request body.
#[derive(Debug)]
pub struct Doc<'a> {
    text: &'a str,
    nodes: Vec<Entry>,
    unescaped: String,
}

impl<'a> Doc<'a> {
    /// Parse `body`; the document borrows it.
    pub fn parse(body: &'a [u8]) -> Result<Doc<'a>, ParseError> {
        let text = std::str::from_utf8(body).map_err(|e| ParseError {
            what: "invalid UTF-8",
            at: e.valid_up_to(),
        })?;
        if u32::try_from(text.len()).is_err() {
            return Err(ParseError {
                what: "document too large",
                at: 0,
            });
        }
        let mut p = Parser {
            b: text.as_bytes(),
            pos: 0,
            nodes: Vec::with_capacity(text.len() / 12 + 4),
            unescaped: String::new(),
        };
        p.document()?;
        Ok(Doc {
            text,
            nodes: p.nodes,
            unescaped: p.unescaped,
        })
    }

    /// The top-level value.
    pub fn root(&self) -> Node<'_> {
        Node { doc: self, i: 0 }
    }

    fn entry(&self, i: u32) -> Option<&Entry> {
        self.nodes.get(i as usize)
    }
}

/// A node's value, for matching on its JSON type.
pub enum View<'d> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number's source text.
    Number(&'d str),
    /// A string, unescaped.
    String(&'d str),
    /// An array's elements.
    Array(Array<'d>),
    /// An object's members.
    Object(Members<'d>),
}

/// One value in a [`Doc`]: a cheap copyable handle.
#[derive(Clone, Copy)]
pub struct Node<'d> {
    doc: &'d Doc<'d>,
    i: u32,
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({:?} #{})", self.kind(), self.i)
    }
}

impl<'d> Node<'d> {
    fn entry(self) -> Entry {
        // Handles are only made for indices inside the document.
        self.doc.entry(self.i).copied().unwrap_or(Entry {
            tag: Tag::Null,
            a: 0,
            b: 0,
            next: self.i.saturating_add(1),
            start: 0,
        })
    }

    /// Byte offset in the body where this value starts.
    pub fn start_byte(self) -> usize {
        self.entry().start as usize
    }

    /// Byte offset just past this array or object (`None` for other values).
    pub fn end_byte(self) -> Option<usize> {
        let e = self.entry();
        matches!(e.tag, Tag::Array | Tag::Object).then_some(e.b as usize)
    }

    /// The JSON type.
    pub fn kind(self) -> Kind {
        match self.entry().tag {
            Tag::Null => Kind::Null,
            Tag::True | Tag::False => Kind::Bool,
            Tag::Number => Kind::Number,
            Tag::Str | Tag::EscStr => Kind::String,
            Tag::Array => Kind::Array,
            Tag::Object => Kind::Object,
        }
    }

    /// The value, to match on.
    pub fn view(self) -> View<'d> {
        let e = self.entry();
        let (a, b) = (e.a as usize, e.b as usize);
        match e.tag {
            Tag::Null => View::Null,
            Tag::True => View::Bool(true),
            Tag::False => View::Bool(false),
            Tag::Number => View::Number(self.doc.text.get(a..b).unwrap_or("0")),
            Tag::Str => View::String(self.doc.text.get(a..b).unwrap_or("")),
            Tag::EscStr => View::String(self.doc.unescaped.get(a..b).unwrap_or("")),
            Tag::Array => View::Array(Array {
                doc: Some(self.doc),
                first: self.i + 1,
                len: e.a,
                end: e.b,
            }),
            Tag::Object => View::Object(Members {
                doc: self.doc,
                at: self.i + 1,
                left: e.a,
            }),
        }
    }

    /// `true` for `null`.
    pub fn is_null(self) -> bool {
        self.entry().tag == Tag::Null
    }

    /// `true` for an object.
    pub fn is_object(self) -> bool {
        self.entry().tag == Tag::Object
    }

    /// The string, unescaped.
    pub fn as_str(self) -> Option<&'d str> {
        let e = self.entry();
        let (a, b) = (e.a as usize, e.b as usize);
        match e.tag {
            Tag::Str => self.doc.text.get(a..b),
            Tag::EscStr => self.doc.unescaped.get(a..b),
            _ => None,
        }
    }

    /// The boolean.
    pub fn as_bool(self) -> Option<bool> {
        match self.view() {
            View::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A non-negative integer that fits `u64` (as serde_json's `as_u64`: not
    /// `1.0`, not `1e3`).
    pub fn as_u64(self) -> Option<u64> {
        let raw = self.raw_number()?;
        if raw.bytes().all(|c| c.is_ascii_digit()) {
            raw.parse().ok()
        } else {
            None
        }
    }

    /// A number's source text.
    pub fn raw_number(self) -> Option<&'d str> {
        match self.view() {
            View::Number(raw) => Some(raw),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(self) -> Option<Array<'d>> {
        match self.view() {
            View::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members in document order (duplicates included), if this is an object.
    pub fn members(self) -> Option<Members<'d>> {
        match self.view() {
            View::Object(m) => Some(m),
            _ => None,
        }
    }

    /// The value of member `key` (the last one, should the key repeat).
    pub fn get(self, key: &str) -> Option<Node<'d>> {
        let mut found = None;
        for (k, v) in self.members()? {
            if k == key {
                found = Some(v);
            }
        }
        found
    }
}

/// The elements of an array (or none).
#[derive(Clone, Copy)]
pub struct Array<'d> {
    doc: Option<&'d Doc<'d>>,
    first: u32,
    len: u32,
    end: u32,
}

impl<'d> Array<'d> {
    /// No elements: what a missing array reads as.
    pub const EMPTY: Array<'static> = Array {
        doc: None,
        first: 0,
        len: 0,
        end: 0,
    };

    /// Number of elements.
    pub fn len(self) -> usize {
        self.len as usize
    }

    /// `true` when there are no elements.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// Byte offset just past the array's `]` (0 for [`Array::EMPTY`]).
    pub fn end_byte(self) -> usize {
        self.end as usize
    }

    /// The first element.
    pub fn first(self) -> Option<Node<'d>> {
        self.iter().next()
    }

    /// The elements in order.
    pub fn iter(self) -> Elements<'d> {
        Elements {
            doc: self.doc,
            at: self.first,
            left: self.len,
        }
    }
}

impl<'d> IntoIterator for Array<'d> {
    type Item = Node<'d>;
    type IntoIter = Elements<'d>;
    fn into_iter(self) -> Elements<'d> {
        self.iter()
    }
}

/// Iterator over an [`Array`].
pub struct Elements<'d> {
    doc: Option<&'d Doc<'d>>,
    at: u32,
    left: u32,
}

impl<'d> Iterator for Elements<'d> {
    type Item = Node<'d>;
    fn next(&mut self) -> Option<Node<'d>> {
        if self.left == 0 {
            return None;
        }
        let doc = self.doc?;
        let node = Node { doc, i: self.at };
        self.at = node.entry().next;
        self.left -= 1;
        Some(node)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// Iterator over an object's `(key, value)` members.
pub struct Members<'d> {
    doc: &'d Doc<'d>,
    at: u32,
    left: u32,
}

impl<'d> Iterator for Members<'d> {
    type Item = (&'d str, Node<'d>);
    fn next(&mut self) -> Option<(&'d str, Node<'d>)> {
        if self.left == 0 {
            return None;
        }
        let key = Node {
            doc: self.doc,
            i: self.at,
        };
        let value = Node {
            doc: self.doc,
            i: self.at + 1,
        };
        self.at = value.entry().next;
        self.left -= 1;
        Some((key.as_str().unwrap_or(""), value))
    }
}

struct Parser<'b> {
    b: &'b [u8],
    pos: usize,
    nodes: Vec<Entry>,
    unescaped: String,
}

/// An open array or object: its entry, and whether it is an object.
struct Open {
    at: u32,
    object: bool,
    count: u32,
}

// The per-byte helpers below are forced inline: called from several places, they
// were kept out of line, and a body of 100k small values parsed 10% slower in wasm.
impl Parser<'_> {
    fn err<T>(&self, what: &'static str) -> Result<T, ParseError> {
        Err(ParseError { what, at: self.pos })
    }

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    #[inline(always)]
    fn push(&mut self, tag: Tag, a: usize, b: usize, start: usize) -> u32 {
        let i = self.nodes.len() as u32;
        self.nodes.push(Entry {
            tag,
            a: a as u32,
            b: b as u32,
            next: i + 1,
            start: start as u32,
        });
        i
    }

    fn document(&mut self) -> Result<(), ParseError> {
        let mut stack: Vec<Open> = Vec::new();
        self.skip_ws();
        loop {
            // A value starts here.
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if stack.len() + 1 >= MAX_DEPTH {
                        return self.err("nesting deeper than 128");
                    }
                    let object = c == b'{';
                    let at = self.push(
                        if object { Tag::Object } else { Tag::Array },
                        0,
                        0,
                        self.pos,
                    );
                    self.pos += 1;
                    self.skip_ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        if let Some(e) = self.nodes.get_mut(at as usize) {
                            e.b = self.pos as u32;
                        }
                    } else {
                        stack.push(Open {
                            at,
                            object,
                            count: 0,
                        });
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.literal(b"true", Tag::True)?,
                Some(b'f') => self.literal(b"false", Tag::False)?,
                Some(b'n') => self.literal(b"null", Tag::Null)?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => return self.err("expected a value"),
                None => return self.err("unexpected end of input"),
            }
            // A value ended: close containers until one wants another member.
            loop {
                self.skip_ws();
                let Some(top) = stack.last_mut() else {
                    if self.pos != self.b.len() {
                        return self.err("trailing characters");
                    }
                    return Ok(());
                };
                top.count += 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if top.object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if top.object => {}
                    Some(b']') if !top.object => {}
                    None => return self.err("unexpected end of input"),
                    Some(_) if top.object => return self.err("expected ',' or '}'"),
                    Some(_) => return self.err("expected ',' or ']'"),
                }
                self.pos += 1;
                let (at, count) = (top.at, top.count);
                stack.pop();
                let end = self.nodes.len() as u32;
                if let Some(e) = self.nodes.get_mut(at as usize) {
                    e.a = count;
                    e.b = self.pos as u32;
                    e.next = end;
                }
            }
        }
    }

    /// An object key, the colon, and the whitespace before the value.
    #[inline(always)]
    fn key(&mut self) -> Result<(), ParseError> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.err("expected ':'");
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    fn literal(&mut self, word: &[u8], tag: Tag) -> Result<(), ParseError> {
        if self.b.get(self.pos..self.pos + word.len()) != Some(word) {
            return self.err("invalid literal");
        }
        self.push(tag, 0, 0, self.pos);
        self.pos += word.len();
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        // serde_json refuses numbers that overflow f64; short ones without an
        // exponent cannot.
        if exponent || self.pos - start > 18 {
            let raw = self
                .b
                .get(start..self.pos)
                .and_then(|r| std::str::from_utf8(r).ok())
                .unwrap_or("");
            if raw.parse::<f64>().map_or(true, f64::is_infinite) {
                return self.err("number out of range");
            }
        }
        self.push(Tag::Number, start, self.pos, start);
        Ok(())
    }

    /// A string starting at the opening quote.
    #[inline(always)]
    fn string(&mut self) -> Result<(), ParseError> {
        self.pos += 1;
        let start = self.pos;
        self.skip_plain();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.push(Tag::Str, start, self.pos, start - 1);
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => return self.escaped(start),
                Some(0..=0x1f) => return self.err("control character in string"),
                Some(_) => self.pos += 1,
                None => return self.err("unterminated string"),
            }
        }
    }

    /// Skip string bytes that need no attention (not `"`, `\\` or a control
    /// character) eight at a time: prompts are long strings, and a byte-at-a-time
    /// loop made parsing three times slower than serde_json's on them.
    #[inline(always)]
    fn skip_plain(&mut self) {
        self.pos = crate::bytescan::skip_plain(self.b, self.pos);
    }

    /// The rest of a string that holds escapes, unescaped into the side buffer.
    fn escaped(&mut self, start: usize) -> Result<(), ParseError> {
        let from = self.unescaped.len();
        let mut run = start;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.flush(run)?;
                    self.pos += 1;
                    self.push(Tag::EscStr, from, self.unescaped.len(), start - 1);
                    return Ok(());
                }
                Some(b'\\') => {
                    self.flush(run)?;
                    self.pos += 1;
                    let simple = match self.peek() {
                        Some(b'"') => Some('"'),
                        Some(b'\\') => Some('\\'),
                        Some(b'/') => Some('/'),
                        Some(b'b') => Some('\u{8}'),
                        Some(b'f') => Some('\u{c}'),
                        Some(b'n') => Some('\n'),
                        Some(b'r') => Some('\r'),
                        Some(b't') => Some('\t'),
                        Some(b'u') => None,
                        _ => return self.err("invalid escape"),
                    };
                    self.pos += 1;
                    let c = match simple {
                        Some(c) => c,
                        None => self.unicode()?,
                    };
                    self.unescaped.push(c);
                    run = self.pos;
                    self.skip_plain();
                }
                Some(0..=0x1f) => return self.err("control character in string"),
                Some(_) => self.pos += 1,
                None => return self.err("unterminated string"),
            }
        }
    }

    /// Copy the unescaped run `run..pos` into the side buffer.
    fn flush(&mut self, run: usize) -> Result<(), ParseError> {
        match self.b.get(run..self.pos).map(std::str::from_utf8) {
            Some(Ok(s)) => {
                self.unescaped.push_str(s);
                Ok(())
            }
            _ => self.err("invalid UTF-8"),
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return self.err("invalid \\u escape"),
            };
            v = v * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    /// `\uXXXX` (pos after the `u`), with surrogate pairs; pos ends past the digits.
    fn unicode(&mut self) -> Result<char, ParseError> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return self.err("lone leading surrogate in \\u escape");
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return self.err("lone leading surrogate in \\u escape");
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return self.err("lone trailing surrogate in \\u escape"),
            c => c,
        };
        char::from_u32(code).map_or_else(|| self.err("invalid \\u escape"), Ok)
    }
}

#[cfg(test)]
mod tests;
