//! Endpoints for the client's tests: an HTTP/1.1 server that records what it is sent, and
//! TLS servers with a certificate of a fresh authority.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// How the HTTP/1.1 server answers: 200 with a JSON body, or the bytes of `answer`.
#[derive(Clone, Copy, Default)]
pub struct Script {
    /// Before every answer.
    pub delay: Duration,
    /// Before the server's first answer only, on top of `delay`.
    pub first_delay: Duration,
    /// Close each connection after its first answer, as a server whose keep-alive ran out
    /// does, without saying so.
    pub once: bool,
    /// Bytes of padding in a header and in the body of every answer.
    pub pad: usize,
    /// Every answer, as it goes on the wire, instead of the 200.
    pub answer: Option<&'static [u8]>,
    /// Send each answer a few bytes at a time, so the client reads it in pieces.
    pub trickle: bool,
}

/// What a server saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    /// Connections the client closed (HTTP/1.1 server only).
    pub closed: AtomicUsize,
    pub answers: AtomicUsize,
    /// The head of every request (its request line and header lines, lower-cased).
    pub heads: Mutex<Vec<String>>,
    first_done: AtomicBool,
}

impl Seen {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn answers(&self) -> usize {
        self.answers.load(Ordering::SeqCst)
    }
}

/// A listener on 127.0.0.1, its endpoint (`scheme`, then `path`) and a fresh record.
async fn listen(scheme: &str, path: &str) -> (tokio::net::TcpListener, reqwest::Url, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let endpoint = reqwest::Url::parse(&format!("{scheme}://{address}{path}")).unwrap();
    (listener, endpoint, Arc::default())
}

/// An HTTP/1.1 server on 127.0.0.1; `path` is the endpoint's path (`/` or a base path).
pub async fn h1_server(script: Script, path: &str) -> (reqwest::Url, Arc<Seen>) {
    let (listener, endpoint, seen) = listen("http", path).await;
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                serve_h1(socket, script, Arc::clone(&seen)).await;
                seen.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (endpoint, seen)
}

/// Answers the HTTP/1.1 requests on `socket` as `script` says.
async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: S,
    script: Script,
    seen: Arc<Seen>,
) {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let pad = "x".repeat(script.pad);
    loop {
        // One request: its head, then `content-length` bytes of body.
        let (head_end, length) = loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                seen.heads.lock().unwrap().push(head);
                break (end + 4, length);
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        };
        while read.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
        read.drain(..head_end + length);
        if !seen.first_done.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(script.first_delay).await;
        }
        tokio::time::sleep(script.delay).await;
        let answer = script.answer.map_or_else(
            || {
                let body = format!("{{\"pad\":\"{pad}\"}}");
                format!(
                    "HTTP/1.1 200 OK\r\nx-pad: {pad}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            <[u8]>::to_vec,
        );
        let pieces = if script.trickle {
            5
        } else {
            answer.len().max(1)
        };
        for piece in answer.chunks(pieces) {
            if socket.write_all(piece).await.is_err() {
                return;
            }
            if script.trickle {
                socket.flush().await.ok();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        seen.answers.fetch_add(1, Ordering::SeqCst);
        if script.once {
            return;
        }
    }
}

/// A TLS server on 127.0.0.1 with a certificate of a fresh authority, offering only `alpn`:
/// `h2` answers 200 over HTTP/2, `http/1.1` as `script` says. Returns the endpoint, the
/// authority's certificate and what the server saw.
pub async fn tls_server(
    alpn: &'static [u8],
    script: Script,
) -> (reqwest::Url, CertificateDer<'static>, Arc<Seen>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (listener, endpoint, seen) = listen("https", "").await;
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            shared.connections.fetch_add(1, Ordering::SeqCst);
            // A client that does not trust the certificate ends the handshake.
            let Ok(socket) = acceptor.accept(socket).await else {
                continue;
            };
            let seen = Arc::clone(&shared);
            if alpn == b"h2" {
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(socket).await.unwrap();
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        let answer = http::Response::builder().status(200).body(()).unwrap();
                        let mut body = respond.send_response(answer, false).unwrap();
                        body.send_data(Bytes::from_static(b"{}"), true).unwrap();
                        seen.answers.fetch_add(1, Ordering::SeqCst);
                    }
                });
            } else {
                tokio::spawn(serve_h1(socket, script, seen));
            }
        }
    });
    (endpoint, ca_cert.der().clone(), seen)
}
