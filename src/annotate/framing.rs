//! What an HTTP/1.1 answer's bytes say (no IO): its head, parsed by `httparse` (hyper's
//! own parser), and how its body ends (RFC 9112, section 6: no body for 1xx, 204 and 304,
//! chunked, a `content-length`, or everything until the server closes); a chunked body
//! read as its bytes come.

use std::time::Duration;

use crate::failure::parse_retry_after;

/// The most header fields in a head.
const MAX_FIELDS: usize = 128;

/// An answer that does not follow HTTP/1.1.
#[derive(Debug, thiserror::Error)]
#[error("malformed answer: {0}")]
pub struct Malformed(pub String);

/// Where a chunked body's reading stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunks {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
    /// Past the end of the body.
    Done,
}

impl Chunks {
    /// Reads what it can of `buf`, its data into `body`; returns how many bytes it used
    /// (0 when it needs more).
    pub fn step(&mut self, buf: &[u8], body: &mut Vec<u8>) -> Result<usize, Malformed> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match *self {
                // httparse takes a line without digits for a size of 0: the last chunk.
                Self::Size if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Err(Malformed("invalid chunk size".into()));
                }
                Self::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((read, 0))) => {
                        used += read;
                        *self = Self::Trailers;
                    }
                    Ok(httparse::Status::Complete((read, size))) => {
                        used += read;
                        *self = Self::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(used),
                    Err(_) => return Err(Malformed("invalid chunk size".into())),
                },
                Self::Data(left) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    body.extend_from_slice(&rest[..take]);
                    used += take;
                    *self = match left - take as u64 {
                        0 => Self::DataEnd,
                        left => Self::Data(left),
                    };
                }
                Self::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        *self = Self::Size;
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err(Malformed("no CRLF after a chunk".into())),
                },
                Self::Trailers => {
                    // Trailer fields are read past, not kept; each must be one, so the
                    // head of a next answer is not taken for them.
                    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((read, _))) => {
                            used += read;
                            *self = Self::Done;
                        }
                        Ok(httparse::Status::Partial) => return Ok(used),
                        Err(_) => return Err(Malformed("invalid trailer".into())),
                    }
                }
                Self::Done => return Ok(used),
            }
        }
    }
}

/// What an answer's head says.
#[derive(Debug)]
pub struct Head {
    /// Its length in bytes.
    pub len: usize,
    /// Its status code.
    pub status: u16,
    /// Its `Retry-After`, when it has a valid one.
    pub retry_after: Option<Duration>,
    /// How its body ends.
    pub framing: Framing,
    /// HTTP/1.1 without `connection: close`, and a body whose end is known.
    pub keep_alive: bool,
}

/// How an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: 1xx, 204, 304.
    Empty,
    /// A `content-length` of this many bytes.
    Length(u64),
    /// `transfer-encoding` ending in `chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// The head at the start of `buf`, or `None` while it is not whole.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Malformed> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or_default();
    if status == 101 {
        return Err(Malformed("switching protocols".into()));
    }
    let mut keep_alive = response.version == Some(1);
    let mut length = None;
    let mut encoded = None;
    let mut retry_after = None;
    for field in response.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(field.value)?;
            if length.is_some_and(|known| known != value) {
                return Err(Malformed("differing content-length".into()));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only when it is the last coding.
            encoded = Some(last_token(field.value).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            if tokens(field.value).any(|t| t.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = std::str::from_utf8(field.value)
                .ok()
                .and_then(parse_retry_after);
        }
    }
    let framing = match (status, encoded, length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        (_, Some(true), _) => Framing::Chunked,
        (_, Some(false), _) | (_, None, None) => Framing::UntilClose,
        (_, None, Some(length)) => Framing::Length(length),
    };
    if framing == Framing::UntilClose || (encoded.is_some() && length.is_some()) {
        // Both a coding and a length: a sign of request smuggling; the connection ends.
        keep_alive = false;
    }
    Ok(Some(Head {
        len,
        status,
        retry_after,
        framing,
        keep_alive,
    }))
}

/// A `content-length` value: digits, or a list of equal ones.
fn parse_length(value: &[u8]) -> Result<u64, Malformed> {
    let invalid = || Malformed("invalid content-length".into());
    let mut length = None;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.is_empty() || token.len() > 18 || !token.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let value = token.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|known| known != value) {
            return Err(invalid());
        }
        length = Some(value);
    }
    length.ok_or_else(invalid)
}

/// The comma-separated tokens of a field value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn last_token(value: &[u8]) -> &[u8] {
    tokens(value).last().unwrap_or_default()
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
