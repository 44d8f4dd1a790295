//! The annotate client: its URLs, TLS and the protocol an https endpoint offers, its retry
//! of a call not taken, and a missing credential (its HTTP/1.1 connections: `h1_tests.rs`;
//! the choice among pooled clients: `pooled.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::annotate::test_servers::{Script, tls_server};
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
        Auth::Google(std::sync::Arc::new(
            crate::annotate::auth::GoogleAuth::new(move || Ok(credentials.clone())).unwrap(),
        )),
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

#[tokio::test]
async fn an_https_endpoint_is_verified_and_spoken_to_in_the_protocol_it_offers() {
    let name = AssessmentName::parse("projects/p/assessments/a").unwrap();
    // HTTP/1.1 with a head and a body longer than hyper's first read buffer.
    let script = Script {
        pad: 10_000,
        ..Script::default()
    };
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (endpoint, ca, seen) = tls_server(alpn, script).await;
        // Unknown to the system's trust store: refused, nothing sent.
        let untrusted =
            AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).unwrap();
        let call = untrusted.annotate(&name, Bytes::from_static(b"{}")).await;
        assert!(
            matches!(&call.result, Err(Failure::Retry(r)) if r.cause == RetryCause::Connection),
            "{:?}",
            call.result
        );
        let client =
            AnnotateClient::trusting(&endpoint, Auth::None, &RecaptchaConfig::default(), vec![ca])
                .unwrap();
        for _ in 0..3 {
            let call = client.annotate(&name, Bytes::from_static(b"{}")).await;
            assert!(call.result.is_ok(), "{alpn:?}: {:?}", call.result);
            assert_eq!(call.status, Some(200));
        }
        assert_eq!(seen.answers(), 3, "{alpn:?}");
        // Over HTTP/1.1 hyper-util's pool may open one more while a connection comes back.
        if alpn == b"h2" {
            assert_eq!(
                seen.connections(),
                2,
                "the refused one, then one for every call"
            );
        }
    }
}
