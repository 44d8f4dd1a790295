//! One HTTP/1.1 exchange on a connection: the call written as bytes, the answer read back.
//!
//! What the answer's bytes say is worked out in `framing.rs`; this file reads them, into a
//! buffer taken only once the answer's first bytes are there, so a call waiting for its
//! answer holds no buffer: hyper keeps a request channel and an 8 KB write and read buffer
//! on each connection, about 28 KB, whether a call is waiting on it or not (README,
//! Benchmark).

use std::io;
use std::time::Duration;

use http::HeaderMap;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::framing::{Chunks, Framing, Malformed, parse_head};

/// The longest answer head read: a proxy's or Google's heads are well under it.
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line or trailer section of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// What a read asks for at the least.
const READ_SIZE: usize = 2 * 1024;
/// The most interim answers (1xx) taken before the real one.
const MAX_INTERIM: usize = 8;

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
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("the answer's head is longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    /// Its status code.
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
    /// The answer's status, when its head had come.
    pub status: Option<u16>,
    /// What went wrong.
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
        push_field(&mut out, name, value);
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Appends the header line `name: value`. A header name is a token and a value holds no CR
/// or LF, so it is one line.
pub fn push_field(out: &mut Vec<u8>, name: &http::HeaderName, value: &http::HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether `buf` holds a head's end (an empty line; httparse takes a bare LF too) that was
/// not there before `scanned`.
fn head_ends(buf: &[u8], scanned: usize) -> bool {
    let new = &buf[scanned.saturating_sub(3)..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
thread_local! {
    /// How often this thread parsed a head (tests: once per head however it arrives).
    pub static HEAD_PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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
    let mut interim = 0;
    // How much of `buf` was looked at for the head's end: a head that arrives a byte at a
    // time is parsed once, when its end is in, not from its start on every read.
    let mut scanned = 0;
    let head = loop {
        let parsed = if head_ends(&buf, scanned) {
            #[cfg(test)]
            HEAD_PARSES.with(|n| n.set(n.get() + 1));
            parse_head(&buf).map_err(H1Error::from)?
        } else {
            None
        };
        scanned = buf.len();
        if let Some(head) = parsed {
            if (100..200).contains(&head.status) {
                // An interim answer (100 Continue, 103 Early Hints): the real one follows.
                interim += 1;
                if interim > MAX_INTERIM {
                    let many = format!("more than {MAX_INTERIM} interim answers");
                    return Err(H1Error::from(Malformed(many)).into());
                }
                buf.drain(..head.len);
                scanned = 0;
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
    // A body past the cap is never read to its end: its connection is not reused.
    let whole = length <= kept as u64 && buf.len() as u64 == length;
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
                return Err(Malformed("chunk line too long".into()).into());
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

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
