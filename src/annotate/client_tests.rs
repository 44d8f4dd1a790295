//! The annotate client: its URLs, its choice of connection, its HTTP/1.1 connections, its
//! retry of a call not taken, and a missing credential.

use super::*;
use crate::failure::HaltScope;

#[test]
fn the_call_url_keeps_the_endpoint_path_and_names_the_assessment() {
    let name = AssessmentName::parse("projects/p-1/assessments/a_b").unwrap();
    for (endpoint, url) in [
        (
            "https://recaptchaenterprise.googleapis.com",
            "https://recaptchaenterprise.googleapis.com/v1/projects/p-1/assessments/a_b:annotate",
        ),
        (
            "http://127.0.0.1:8085/proxy/",
            "http://127.0.0.1:8085/proxy/v1/projects/p-1/assessments/a_b:annotate",
        ),
    ] {
        let client = AnnotateClient::new(
            &reqwest::Url::parse(endpoint).unwrap(),
            Auth::None,
            &RecaptchaConfig::default(),
        )
        .unwrap();
        assert_eq!(client.url(&name).to_string(), url);
    }
}

#[test]
fn calls_fill_one_client_before_the_next_and_then_go_to_the_least_busy() {
    let config = RecaptchaConfig {
        clients: 3,
        // The pooled clients (HTTP/2 here; an https endpoint's by ALPN).
        http2_prior_knowledge: true,
        ..RecaptchaConfig::default()
    };
    let endpoint = reqwest::Url::parse("http://127.0.0.1:1").unwrap();
    let client = AnnotateClient::new(&endpoint, Auth::None, &config).unwrap();
    let index = |c: &Http| client.http.iter().position(|h| std::ptr::eq(h, c)).unwrap();
    let mut held: Vec<_> = (0..CALLS_PER_CLIENT).map(|_| client.pick()).collect();
    assert!(held.iter().all(|(c, _)| index(c) == 0));
    held.push(client.pick());
    assert_eq!(index(held.last().unwrap().0), 1, "the first client is full");
    // Calls on the first client end: it takes the next call again.
    held.truncate(10);
    assert_eq!(index(client.pick().0), 0);
    // Every client full: the least busy one.
    let more: Vec<_> = (0..3 * CALLS_PER_CLIENT).map(|_| client.pick()).collect();
    let loads: Vec<usize> = client
        .loads
        .iter()
        .map(|l| l.load(Ordering::Relaxed))
        .collect();
    assert_eq!(loads.iter().sum::<usize>(), 10 + 3 * CALLS_PER_CLIENT);
    assert!(
        loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
        "{loads:?}"
    );
    drop((held, more));
    assert!(client.loads.iter().all(|l| l.load(Ordering::Relaxed) == 0));
}

#[tokio::test]
async fn a_call_the_server_refused_unread_goes_again_at_once() {
    // An HTTP/2 server that refuses its first stream (REFUSED_STREAM: not processed)
    // and answers 200 to every later one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint =
        reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut connection = h2::server::handshake(socket).await.unwrap();
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let answer = http::Response::builder().status(200).body(()).unwrap();
                    let mut body = respond.send_response(answer, false).unwrap();
                    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
                }
            });
        }
    });
    let config = RecaptchaConfig {
        http2_prior_knowledge: true,
        ..RecaptchaConfig::default()
    };
    let client = AnnotateClient::new(&endpoint, Auth::None, &config).unwrap();
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    let call = client.annotate(&name, Bytes::from_static(b"{}")).await;
    assert!(call.result.is_ok(), "{:?}", call.result);
    assert_eq!(call.status, Some(200));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "refused once, then answered"
    );
}

/// An HTTP/1.1 server that answers `200 {}` after `delay`, counts the connections it
/// accepts and, when `once` is set, closes each connection after its first answer (as a
/// server whose keep-alive ran out does, without saying so).
async fn h1_server(
    delay: Duration,
    once: bool,
) -> (reqwest::Url, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint =
        reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let (connections, answers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (accepted, answered) = (Arc::clone(&connections), Arc::clone(&answers));
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            let answered = Arc::clone(&answered);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then `content-length` bytes of body.
                    let (head, length) = loop {
                        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            break (end + 4, length);
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while read.len() < head + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read.extend_from_slice(&chunk[..n]),
                        }
                    }
                    read.drain(..head + length);
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    if once {
                        return;
                    }
                }
            });
        }
    });
    (endpoint, connections, answers)
}

#[tokio::test]
async fn http1_calls_reuse_connections_and_never_open_more_than_are_in_flight() {
    let (endpoint, connections, answers) = h1_server(Duration::from_millis(50), false).await;
    let client = AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).unwrap();
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    for _ in 0..3 {
        let calls = (0..40).map(|_| client.annotate(&name, Bytes::from_static(b"{}")));
        for call in futures::future::join_all(calls).await {
            assert!(call.result.is_ok(), "{:?}", call.result);
        }
    }
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (1..=40).contains(&opened),
        "{opened} connections for 40 calls in flight"
    );
    // One at a time: each call takes a connection the last one gave back.
    for _ in 0..5 {
        let call = client.annotate(&name, Bytes::from_static(b"{}")).await;
        assert!(call.result.is_ok(), "{:?}", call.result);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        opened,
        "no new connection"
    );
    assert_eq!(answers.load(Ordering::SeqCst), 125);
}

#[tokio::test]
async fn an_http1_connection_the_server_closed_while_idle_is_not_a_failed_call() {
    let (endpoint, connections, _) = h1_server(Duration::ZERO, true).await;
    let client = AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).unwrap();
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    for _ in 0..5 {
        let call = client.annotate(&name, Bytes::from_static(b"{}")).await;
        assert!(call.result.is_ok(), "{:?}", call.result);
        assert_eq!(call.status, Some(200));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn no_google_credentials_halts_every_call_instead_of_retrying_each_event() {
    // A user's refresh token whose token endpoint cannot be reached (loopback, closed).
    let credentials =
        google_cloud_auth::credentials::user_account::Builder::new(serde_json::json!({
            "client_id": "id.apps.googleusercontent.com",
            "client_secret": "secret",
            "refresh_token": "refresh",
            "type": "authorized_user",
            "token_uri": "http://127.0.0.1:1/token",
        }))
        .build()
        .unwrap();
    let endpoint = reqwest::Url::parse("http://127.0.0.1:1").unwrap();
    let client = AnnotateClient::new(
        &endpoint,
        Auth::Google(credentials),
        &RecaptchaConfig::default(),
    )
    .unwrap();
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    let call = tokio::time::timeout(
        Duration::from_secs(60),
        client.annotate(&name, Bytes::new()),
    )
    .await
    .expect("the token attempt ends");
    assert!(
        matches!(
            &call.result,
            Err(Failure::Halt(h)) if h.scope == HaltScope::Service && h.status.is_none()
        ),
        "{:?}",
        call.result
    );
}
