//! HTTP/1.1 calls to a plain `http` endpoint, through [`H1Pool`] as the service makes them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;

use super::{H1Pool, H1Settings};

use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::annotate::test_servers::{Script, h1_server};
use crate::config::RecaptchaConfig;
use crate::domain::assessment::AssessmentName;
use crate::failure::{Failure, RetryCause};

fn name() -> AssessmentName {
    AssessmentName::parse("projects/p/assessments/a").unwrap()
}

fn client(endpoint: &reqwest::Url, config: &RecaptchaConfig) -> AnnotateClient {
    AnnotateClient::new(endpoint, Auth::None, config).unwrap()
}

#[tokio::test]
async fn calls_reuse_connections_and_never_open_more_than_are_in_flight() {
    let script = Script {
        delay: Duration::from_millis(50),
        ..Script::default()
    };
    let (endpoint, seen) = h1_server(script, "/proxy/").await;
    let client = client(&endpoint, &RecaptchaConfig::default());
    let name = name();
    for _ in 0..3 {
        let calls = (0..40).map(|_| client.annotate(&name, Bytes::from_static(b"{}")));
        for call in futures::future::join_all(calls).await {
            assert!(call.result.is_ok(), "{:?}", call.result);
        }
    }
    let opened = seen.connections();
    assert!(
        (1..=40).contains(&opened),
        "{opened} connections for 40 calls in flight"
    );
    // One at a time: each call takes a connection the last one gave back.
    for _ in 0..5 {
        let call = client.annotate(&name, Bytes::from_static(b"{}")).await;
        assert!(call.result.is_ok(), "{:?}", call.result);
    }
    assert_eq!(seen.connections(), opened, "no new connection");
    assert_eq!(seen.answers(), 125);
    // Origin form with the endpoint's path, and the endpoint's host.
    let host = format!("host: {}", endpoint.authority());
    for head in seen.heads.lock().unwrap().iter() {
        let mut lines = head.lines();
        assert_eq!(
            lines.next(),
            Some("post /proxy/v1/projects/p/assessments/a:annotate http/1.1")
        );
        assert!(lines.any(|l| l == host), "{head}");
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_a_failed_call() {
    let script = Script {
        once: true,
        ..Script::default()
    };
    let (endpoint, seen) = h1_server(script, "/").await;
    let client = client(&endpoint, &RecaptchaConfig::default());
    for _ in 0..5 {
        let call = client.annotate(&name(), Bytes::from_static(b"{}")).await;
        assert!(call.result.is_ok(), "{:?}", call.result);
        assert_eq!(call.status, Some(200));
    }
    assert_eq!(seen.connections(), 5);
}

#[tokio::test]
async fn an_answer_longer_than_the_first_read_is_read_whole_and_its_connection_kept() {
    // 10 KB in a header and in the body: more than one read takes.
    let script = Script {
        pad: 10_000,
        ..Script::default()
    };
    let (endpoint, seen) = h1_server(script, "/").await;
    let client = client(&endpoint, &RecaptchaConfig::default());
    for _ in 0..3 {
        let call = client.annotate(&name(), Bytes::from_static(b"{}")).await;
        assert!(call.result.is_ok(), "{:?}", call.result);
    }
    assert_eq!(seen.answers(), 3);
    // Read to its end, so given back and taken by the next call.
    assert_eq!(seen.connections(), 1, "one connection, reused");
}

#[tokio::test]
async fn a_call_past_its_deadline_gives_up_its_connection_and_the_next_call_gets_its_own_answer() {
    let script = Script {
        first_delay: Duration::from_secs(30),
        ..Script::default()
    };
    let (endpoint, seen) = h1_server(script, "/").await;
    let config = RecaptchaConfig {
        request_timeout: Duration::from_secs(3),
        ..RecaptchaConfig::default()
    };
    let client = client(&endpoint, &config);
    let late = client.annotate(&name(), Bytes::from_static(b"{}")).await;
    assert!(
        matches!(&late.result, Err(Failure::Retry(r)) if r.cause == RetryCause::Timeout),
        "{:?}",
        late.result
    );
    let next = client.annotate(&name(), Bytes::from_static(b"{}")).await;
    assert!(next.result.is_ok(), "{:?}", next.result);
    assert_eq!(
        seen.connections(),
        2,
        "the late call's connection is not reused: its answer would be taken for the next call's"
    );
}

/// A pool to `authority` that made one call and kept its connection.
async fn pool_after_one_call(
    authority: &http::uri::Authority,
    idle_timeout: Duration,
) -> Arc<H1Pool> {
    let settings = H1Settings {
        fixed: &[],
        max_idle: 8,
        idle_timeout,
        max_body: 1024,
    };
    let pool = Arc::new(H1Pool::new(HttpConnector::new(), authority, &settings).unwrap());
    let path = "/v1/projects/p/assessments/a:annotate".parse().unwrap();
    let reply = pool
        .call(&path, &http::HeaderMap::new(), b"{}")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(pool.lock().len(), 1, "kept for the next call");
    pool
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_closed_without_waiting_for_a_call() {
    let (endpoint, seen) = h1_server(Script::default(), "/").await;
    let authority = endpoint.authority().parse().unwrap();
    let pool = pool_after_one_call(&authority, Duration::from_millis(100)).await;
    // The sweep runs every second at the most often; the server sees the close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.closed.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.lock().is_empty());
}

#[tokio::test]
async fn a_call_carries_its_credentials_and_every_fixed_header_field() {
    let (endpoint, seen) = h1_server(Script::default(), "/").await;
    let auth = Auth::ApiKey(http::HeaderValue::from_static("the-key"));
    let client = AnnotateClient::new(&endpoint, auth, &RecaptchaConfig::default()).unwrap();
    let call = client
        .annotate(&name(), Bytes::from_static(b"{\"a\":1}"))
        .await;
    assert!(call.result.is_ok(), "{:?}", call.result);
    let heads = seen.heads.lock().unwrap();
    let lines: Vec<&str> = heads[0].lines().collect();
    for field in [
        "x-goog-api-key: the-key",
        "content-type: application/json",
        concat!(
            "user-agent: recaptcha-annotator/",
            env!("CARGO_PKG_VERSION")
        ),
        "content-length: 7",
    ] {
        assert!(lines.contains(&field), "{field:?} in {lines:?}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("x-goog-api-client: ")),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 7, "the request line and six fields: {lines:?}");
}

#[tokio::test]
async fn a_connection_the_server_closed_is_found_closed_before_the_runtime_has_seen_it() {
    use std::io::{Read as _, Write as _};
    // A server on its own thread that answers once, then closes when told.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let (close, told) = std::sync::mpsc::channel::<()>();
    let (closed, done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut read = Vec::new();
        let mut chunk = [0u8; 1024];
        while !read.ends_with(b"{}") {
            let n = socket.read(&mut chunk).unwrap();
            assert!(n > 0, "the request was cut short");
            read.extend_from_slice(&chunk[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .unwrap();
        told.recv().unwrap();
        drop(socket);
        closed.send(()).unwrap();
    });
    let pool = pool_after_one_call(&authority, Duration::from_secs(60)).await;
    // A probe that finds it open (the sweep's) leaves the runtime believing nothing is to
    // be read until its I/O driver runs again.
    assert!(pool.lock().iter().all(|idle| super::is_open(&idle.stream)));
    close.send(()).unwrap();
    // Blocking, so the runtime's I/O driver does not run meanwhile.
    done.recv().unwrap();
    assert!(
        pool.take_idle().is_none(),
        "the closed connection would be taken and the call sent on it would fail"
    );
}
