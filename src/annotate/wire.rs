//! One HTTP/1.1 exchange on a connection: the call written as bytes, the answer read back.
//!
//! The answer's head is parsed by `httparse` (hyper's own parser); this file frames the
//! body (RFC 9112, section 6): no body for 1xx, 204 and 304, chunked, a `content-length`,
//! or everything until the server closes. It reads into a buffer taken only once the
//! answer's first bytes are there, so a call waiting for its answer holds no buffer: hyper
//! keeps a request channel and an 8 KB write and read buffer on each connection, about
//! 28 KB, whether a call is waiting on it or not (README, Benchmark).

use std::io;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::failure::parse_retry_after;

/// The longest answer head read: a proxy's or Google's heads are well under it.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a head.
const MAX_FIELDS: usize = 128;
/// The longest chunk-size line or trailer section of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// What a read asks for at the least.
const READ_SIZE: usize = 2 * 1024;

/// Why a call got no whole answer: each keeps its cause, which says whether it timed out.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connecting")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("sending the call")]
    Send(#[source] io::Error),
    #[error("reading the answer")]
    Read(#[source] io::Error),
    #[error("the connection closed before the answer was whole")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("the answer's head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Its `Retry-After`, when it has a valid one.
    pub retry_after: Option<Duration>,
    /// The body, or its first `max_body` bytes.
    pub body: Vec<u8>,
    /// Whether the connection can carry the next call: HTTP/1.1 without `connection:
    /// close`, the body read to its end and nothing after it.
    pub reusable: bool,
}

/// An exchange that failed, with the answer's status when its head had come.
#[derive(Debug)]
pub struct Failed {
    pub status: Option<u16>,
    pub error: H1Error,
}

impl From<H1Error> for Failed {
    fn from(error: H1Error) -> Self {
        Self {
            status: None,
            error,
        }
    }
}

/// A `POST` of `body` to `path` with the `fixed` header lines (each ending in CRLF), then
/// `headers`, then the body's length.
pub fn encode(path: &str, fixed: &[u8], headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + path.len() + fixed.len() + 256 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    out.extend_from_slice(fixed);
    for (name, value) in headers {
        // A header name is a token and a value holds no CR or LF: each is one line.
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Writes `request` and reads its answer; `max_body` bytes of the body are kept.
pub async fn exchange(
    stream: &mut TcpStream,
    request: Vec<u8>,
    max_body: usize,
) -> Result<Reply, Failed> {
    stream.write_all(&request).await.map_err(H1Error::Send)?;
    // A call waiting for its answer holds nothing of it.
    drop(request);
    let mut buf = Vec::new();
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            if (100..200).contains(&head.status) {
                // An interim answer (100 Continue, 103 Early Hints): the real one follows.
                buf.drain(..head.len);
                continue;
            }
            break head;
        }
        if buf.len() >= MAX_HEAD {
            return Err(H1Error::HeadTooLarge.into());
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(H1Error::Closed.into());
        }
    };
    buf.drain(..head.len);
    let failed = |error| Failed {
        status: Some(head.status),
        error,
    };
    let (body, whole) = match head.framing {
        Framing::Empty => (Vec::new(), buf.is_empty()),
        Framing::Length(length) => read_length(stream, buf, length, max_body)
            .await
            .map_err(failed)?,
        Framing::Chunked => read_chunked(stream, buf, max_body).await.map_err(failed)?,
        Framing::UntilClose => {
            let body = read_until_close(stream, buf, max_body)
                .await
                .map_err(failed)?;
            (body, false)
        }
    };
    Ok(Reply {
        status: head.status,
        retry_after: head.retry_after,
        body,
        reusable: whole && head.keep_alive,
    })
}

/// Reads what has come into `buf`, taking room for it only now. `Ok(0)`: the server closed.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, H1Error> {
    loop {
        stream.readable().await.map_err(H1Error::Read)?;
        buf.reserve(READ_SIZE);
        match stream.try_read_buf(buf) {
            Ok(read) => return Ok(read),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(H1Error::Read(e)),
        }
    }
}

/// A body of `length` bytes, `buf` holding its start: the first `max_body` of them, and
/// whether it was read to its end and nothing came after it.
async fn read_length(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    length: u64,
    max_body: usize,
) -> Result<(Vec<u8>, bool), H1Error> {
    let kept = usize::try_from(length).unwrap_or(usize::MAX).min(max_body);
    while buf.len() < kept {
        if read_more(stream, &mut buf).await? == 0 {
            return Err(H1Error::Closed);
        }
    }
    let whole = buf.len() as u64 == length;
    buf.truncate(kept);
    Ok((buf, whole))
}

/// A chunked body, `buf` holding its start: the first `max_body` bytes, and whether it was
/// read to its end and nothing came after it.
async fn read_chunked(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    max_body: usize,
) -> Result<(Vec<u8>, bool), H1Error> {
    let mut body = Vec::new();
    let mut chunks = Chunks::Size;
    loop {
        let used = chunks.step(&buf, &mut body)?;
        buf.drain(..used);
        if chunks == Chunks::Done && body.len() <= max_body {
            return Ok((body, buf.is_empty()));
        }
        if body.len() >= max_body {
            body.truncate(max_body);
            return Ok((body, false));
        }
        if used == 0 {
            if buf.len() >= MAX_CHUNK_LINE && matches!(chunks, Chunks::Size | Chunks::Trailers) {
                return Err(H1Error::Malformed("chunk line too long".into()));
            }
            if read_more(stream, &mut buf).await? == 0 {
                return Err(H1Error::Closed);
            }
        }
    }
}

/// A body that ends when the server closes, `buf` holding its start: its first `max_body`
/// bytes.
async fn read_until_close(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, H1Error> {
    while buf.len() < max_body {
        if read_more(stream, &mut buf).await? == 0 {
            break;
        }
    }
    buf.truncate(max_body);
    Ok(buf)
}

/// Where a chunked body's reading stands.
#[derive(Debug, PartialEq, Eq)]
enum Chunks {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
    Done,
}

impl Chunks {
    /// Reads what it can of `buf`, its data into `body`; returns how many bytes it used
    /// (0 when it needs more).
    fn step(&mut self, buf: &[u8], body: &mut Vec<u8>) -> Result<usize, H1Error> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            match *self {
                // httparse takes a line without digits for a size of 0: the last chunk.
                Self::Size if rest.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Err(H1Error::Malformed("invalid chunk size".into()));
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
                    Err(_) => return Err(H1Error::Malformed("invalid chunk size".into())),
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
                    _ => return Err(H1Error::Malformed("no CRLF after a chunk".into())),
                },
                Self::Trailers => {
                    // Trailer fields are read past, not kept.
                    if rest.starts_with(b"\r\n") {
                        used += 2;
                        *self = Self::Done;
                    } else if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                        used += end + 4;
                        *self = Self::Done;
                    } else {
                        return Ok(used);
                    }
                }
                Self::Done => return Ok(used),
            }
        }
    }
}

/// What an answer's head says.
#[derive(Debug)]
struct Head {
    /// Its length in bytes.
    len: usize,
    status: u16,
    retry_after: Option<Duration>,
    framing: Framing,
    /// HTTP/1.1 without `connection: close`, and a body whose end is known.
    keep_alive: bool,
}

/// How an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The head at the start of `buf`, or `None` while it is not whole.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or_default();
    if status == 101 {
        return Err(H1Error::Malformed("switching protocols".into()));
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
                return Err(H1Error::Malformed("differing content-length".into()));
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
fn parse_length(value: &[u8]) -> Result<u64, H1Error> {
    let invalid = || H1Error::Malformed("invalid content-length".into());
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
#[path = "wire_tests.rs"]
mod tests;
