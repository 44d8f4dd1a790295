//! Heads and chunked bodies, read from bytes.

use super::{Chunks, Framing, parse_head, parse_length};

#[test]
fn heads_say_how_their_body_ends() {
    let head = |text: &str| parse_head(text.as_bytes()).unwrap().unwrap();
    assert_eq!(
        head("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n").framing,
        Framing::Empty
    );
    assert_eq!(
        head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").framing,
        Framing::Chunked
    );
    let gzip = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
    assert_eq!(gzip.framing, Framing::UntilClose);
    assert!(!gzip.keep_alive);
    assert_eq!(
        head("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").framing,
        Framing::Length(5)
    );
    assert!(
        !head("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n")
            .keep_alive
    );
    assert!(
        parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none()
    );
    assert!(parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
    for bad in ["", "+1", "1 2", "5, 6", "99999999999999999999"] {
        assert!(parse_length(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn a_chunked_body_is_read_across_any_split() {
    let wire = b"3\r\nabc\r\n10;ext\r\n0123456789abcdef\r\n0\r\ntrailer: t\r\n\r\n";
    for split in 1..wire.len() {
        let mut chunks = Chunks::Size;
        let mut body = Vec::new();
        let mut buf = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            let used = chunks.step(&buf, &mut body).unwrap();
            buf.drain(..used);
        }
        assert_eq!(chunks, Chunks::Done, "split {split}");
        assert!(buf.is_empty(), "split {split}");
        assert_eq!(body, b"abc0123456789abcdef", "split {split}");
    }
    let mut chunks = Chunks::Size;
    assert!(
        chunks.step(b"2\r\nabX", &mut Vec::new()).is_err(),
        "no CRLF after the data"
    );
    // The next answer's head after the last chunk is not a trailer.
    let mut chunks = Chunks::Size;
    let next = b"0\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
    assert!(
        chunks.step(next, &mut Vec::new()).is_err(),
        "a head taken for trailers"
    );
    for line in ["\r\n", ";ext\r\n", "x\r\n"] {
        let mut chunks = Chunks::Size;
        assert!(
            chunks.step(line.as_bytes(), &mut Vec::new()).is_err(),
            "{line:?}"
        );
    }
}
