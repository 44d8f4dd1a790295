//! The answers an HTTP/1.1 server may give, each read whole or refused with a clear error,
//! and whether its connection can carry the next call.

use std::time::Duration;

use bytes::Bytes;

use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::annotate::client::CallResult;
use crate::annotate::test_servers::{Script, h1_server};
use crate::config::RecaptchaConfig;
use crate::domain::assessment::AssessmentName;
use crate::failure::{Failure, RetryCause};

/// Two calls to a server that gives `answer` (a few bytes at a time when `trickle`), and
/// how many connections they took.
async fn two_calls(answer: &'static [u8], once: bool, trickle: bool) -> (Vec<CallResult>, usize) {
    let script = Script {
        answer: Some(answer),
        once,
        trickle,
        ..Script::default()
    };
    let (endpoint, seen) = h1_server(script, "/").await;
    let client = AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).unwrap();
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    let mut calls = Vec::new();
    for _ in 0..2 {
        calls.push(client.annotate(&name, Bytes::from_static(b"{}")).await);
    }
    (calls, seen.connections())
}

#[tokio::test]
async fn well_formed_answers_are_read_whole_and_their_connection_reused_when_it_can_be() {
    // (answer, the server closes after it, connections for two calls)
    let cases: [(&[u8], bool, usize); 7] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", false, 1),
        // Chunked, with a chunk extension and a trailer.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;x=y\r\n{\r\n1\r\n}\r\n0\r\nx-t: 1\r\n\r\n",
            false,
            1,
        ),
        // An interim answer before the real one.
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
            1,
        ),
        // `connection: close`: the client does not wait for the server to close it.
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
            false,
            2,
        ),
        // No length: the body ends when the server closes.
        (b"HTTP/1.1 200 OK\r\n\r\n{}", true, 2),
        // HTTP/1.0 keeps no connection.
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}", false, 2),
        // Both a coding and a length: the coding frames the body, and the connection ends.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            false,
            2,
        ),
    ];
    for (answer, once, connections) in cases {
        for trickle in [false, true] {
            let shown = String::from_utf8_lossy(answer);
            let (calls, opened) = two_calls(answer, once, trickle).await;
            for call in &calls {
                assert!(matches!(call.status, Some(200 | 204)), "{shown:?}");
                // Read whole either way; a 204 has no body, so it is not Google's `{}`.
                if call.status == Some(204) {
                    assert!(
                        matches!(&call.result, Err(Failure::Halt(h)) if h.detail.contains("recaptcha.endpoint")),
                        "{shown:?}: {:?}",
                        call.result
                    );
                } else {
                    assert!(call.result.is_ok(), "{shown:?}: {:?}", call.result);
                }
            }
            assert_eq!(opened, connections, "{shown:?}, trickled: {trickle}");
        }
    }
    // More bytes than the answer, read with it: not the start of another answer. (Bytes
    // that come later are found when the connection is taken again, or, coming after that,
    // read as the next answer and refused as malformed: a retry.)
    let (calls, opened) = two_calls(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}junk",
        false,
        false,
    )
    .await;
    assert!(calls.iter().all(|call| call.result.is_ok()));
    assert_eq!(opened, 2);
}

#[tokio::test]
async fn an_error_answer_keeps_its_status_retry_after_and_google_error() {
    let answer =
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n\
        18\r\n{\"error\":{\"code\":429,\"me\r\n\
        2e\r\nssage\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\"}}\r\n0\r\n\r\n";
    let (calls, opened) = two_calls(answer, false, true).await;
    let call = &calls[0];
    assert_eq!(call.status, Some(429));
    let Err(Failure::Retry(retry)) = &call.result else {
        panic!("{:?}", call.result);
    };
    assert_eq!(retry.cause, RetryCause::RateLimited, "{retry:?}");
    assert_eq!(retry.after, Some(Duration::from_secs(7)));
    assert_eq!(opened, 1, "the error answer was read whole");
}

#[tokio::test]
async fn a_broken_answer_is_a_connection_retry_that_says_what_was_wrong() {
    let big_head: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\nx-pad: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "x".repeat(70_000)
    )
    .leak()
    .as_bytes();
    // (answer, the server closes after it, the status known, words of the detail)
    let cases: [(&[u8], bool, Option<u16>, &str); 7] = [
        (b"HTTP/1.1 2x0 OK\r\n\r\n", false, None, "status"),
        (b"hello\r\n\r\n", false, None, "version"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            false,
            None,
            "differing content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\n{}",
            false,
            None,
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
            true,
            Some(200),
            "closed before the answer was whole",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
            Some(200),
            "invalid chunk size",
        ),
        (big_head, false, None, "head is longer than 65536 bytes"),
    ];
    for (answer, once, status, detail) in cases {
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(60)]);
        let (calls, _) = two_calls(answer, once, false).await;
        for call in &calls {
            let Err(Failure::Retry(retry)) = &call.result else {
                panic!("{shown:?}: {:?}", call.result);
            };
            assert_eq!(retry.cause, RetryCause::Connection, "{shown:?}");
            assert!(retry.detail.contains(detail), "{shown:?}: {}", retry.detail);
            assert_eq!(call.status, status, "{shown:?}");
        }
    }
}

#[tokio::test]
async fn a_body_past_the_cap_is_cut_and_its_connection_not_reused() {
    let answer: &'static [u8] = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100000\r\n\r\n{}",
        "x".repeat(100_000)
    )
    .leak()
    .as_bytes();
    let (calls, opened) = two_calls(answer, false, false).await;
    for call in &calls {
        assert_eq!(call.status, Some(500));
        assert!(
            matches!(&call.result, Err(Failure::Retry(r)) if r.cause == RetryCause::ServerError),
            "{:?}",
            call.result
        );
    }
    assert_eq!(opened, 2, "the rest of the body was not read");
}

#[tokio::test]
async fn a_head_that_arrives_a_few_bytes_at_a_time_is_parsed_once() {
    let before = super::HEAD_PARSES.with(std::cell::Cell::get);
    let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nx-b: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\nx-c: cccccccccccccccccccccccccccccc\r\ncontent-length: 2\r\n\r\n{}";
    let (calls, _) = two_calls(answer, false, true).await;
    assert!(calls.iter().all(|c| c.result.is_ok()), "{calls:?}");
    let parses = super::HEAD_PARSES.with(std::cell::Cell::get) - before;
    assert_eq!(parses, 2, "one parse per head, not one per read");
}
