//! Endpoints that are not Google's annotate: a server in the test answers every call with an
//! HTML page, as a catch-all server, a proxy or a captive portal does. The service halts
//! naming `recaptcha.endpoint`; nothing is dead-lettered, nothing committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A server answering every request with `status` and an HTML page; returns its URL and
/// how many requests it answered.
async fn html_server(status: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                // The request's head and its small body arrive in a read or two.
                let mut seen = Vec::new();
                let mut buf = [0_u8; 4096];
                while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<html><body><h1>Welcome to the network</h1></body></html>";
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                count.fetch_add(1, Ordering::Relaxed);
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, answered)
}

async fn halts_on(status: &'static str, tag: &str) {
    let env = TestEnv::with_partitions(tag, 1).await;
    let (url, answered) = html_server(status).await;
    env.produce_bulk(unique_events(tag, 5)).await;
    let config = recaptcha_annotator::config::Config::from_toml(&env.config_toml(&format!(
        "[recaptcha]\nendpoint = \"{url}\"\n[delivery]\nshutdown_timeout = \"1s\"\n"
    )))
    .unwrap();
    let service = env.start(config);
    env.wait_not_ready("recaptcha.endpoint", Duration::from_secs(30))
        .await;
    // Probes go out now and then; the events wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, committed) = env.offsets();
    service.stop().await;
    assert!(answered.load(Ordering::Relaxed) >= 1);
    assert!(
        committed.values().all(|&c| c == 0),
        "{status}: committed {committed:?}"
    );
    assert!(
        env.dead_letters(0, Duration::from_secs(3)).is_empty(),
        "{status}: dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_html_page_is_not_an_annotation() {
    halts_on("200 OK", "html-200").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_405_without_googles_error_body_is_not_about_the_event() {
    halts_on("405 Method Not Allowed", "html-405").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancers_400_is_not_about_the_event() {
    halts_on("400 Bad Request", "html-400").await;
}
