//! `POST {endpoint}/v1/{name}:annotate` with pooled connections: over HTTPS (HTTP/2 or
//! HTTP/1.1 as the server offers), HTTP/2 by prior knowledge, or plain HTTP/1.1.
//!
//! The calls go out without reqwest: its layers (redirects, retries, the URL parsed again
//! per call, a request clone kept for each) cost about 10 KB per call in flight and a sixth
//! of the service's CPU per event (README, Benchmark). Proxies from the environment still
//! apply (`route.rs`). The calls go over hyper-util's pooled clients (`pooled.rs`), or to a
//! plain `http` endpoint over HTTP/1.1 connections of the service's own (`h1.rs`,
//! `exchange.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;

use super::auth::{API_CLIENT, Auth};
use super::h1::{H1Pool, H1Settings};
use super::pooled::{Pooled, PooledError};
use crate::config::RecaptchaConfig;
use crate::domain::api::AnnotateRequest;
use crate::domain::assessment::AssessmentName;
use crate::failure::{
    Answer, Failure, GoogleError, Halt, RetryCause, causes, classify, is_json_object,
    parse_retry_after,
};

/// The most of a response body that is read: Google's error bodies are small, and a wrong
/// endpoint can answer with anything.
const MAX_BODY: usize = 64 * 1024;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the HTTP clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("recaptcha.endpoint: {0}")]
    Endpoint(String),
    #[error(transparent)]
    Pooled(#[from] PooledError),
}

/// How the calls reach the endpoint.
#[derive(Clone)]
enum Connections {
    /// hyper-util's pooled clients: HTTP/2, or `https` by ALPN.
    Pooled(Arc<Pooled>),
    /// A plain `http` endpoint without `http2_prior_knowledge`: HTTP/1.1 connections of
    /// the service's own.
    H1(Arc<H1Pool>),
}

#[derive(Clone)]
pub struct AnnotateClient {
    connections: Connections,
    /// The endpoint's scheme and host, parsed once: each call's URI reuses them, so only its
    /// path is new.
    scheme: Scheme,
    authority: Authority,
    /// The endpoint's own path without its trailing `/` (empty for Google's).
    base_path: String,
    /// `request_timeout`: from sending the call to the end of the answer's body.
    timeout: Duration,
    auth: Auth,
}

/// One call's result with its timing, for metrics.
#[derive(Debug)]
pub struct CallResult {
    /// `Ok` on a 2xx; otherwise what happens next.
    pub result: Result<(), Failure>,
    pub status: Option<u16>,
    pub elapsed: Duration,
}

impl AnnotateClient {
    pub fn new(
        endpoint: &reqwest::Url,
        auth: Auth,
        config: &RecaptchaConfig,
    ) -> Result<Self, ClientError> {
        Self::trusting(endpoint, auth, config, Vec::new())
    }

    /// A client that trusts `extra_roots` besides the system's trust store (the tests' own
    /// certificate authority).
    fn trusting(
        endpoint: &reqwest::Url,
        auth: Auth,
        config: &RecaptchaConfig,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Self, ClientError> {
        let uri: Uri = endpoint
            .as_str()
            .parse()
            .map_err(|e| ClientError::Endpoint(format!("{e}")))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(ClientError::Endpoint("needs a scheme and a host".into()));
        };
        let tcp = {
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            // A connection whose path died silently is found within about 30 s, not the
            // kernel's 15 minutes (reqwest's settings).
            tcp.set_keepalive(Some(Duration::from_secs(15)));
            tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
            tcp.set_keepalive_retries(Some(3));
            tcp.set_tcp_user_timeout(Some(Duration::from_secs(30)));
            tcp.set_connect_timeout(Some(config.request_timeout.min(Duration::from_secs(5))));
            tcp
        };
        let connections = if scheme == Scheme::HTTP && !config.http2_prior_knowledge {
            let settings = H1Settings {
                fixed: &fixed_headers(),
                // As many idle as the pooled clients would keep together.
                max_idle: config
                    .max_idle_connections
                    .saturating_mul(config.clients.max(1)),
                idle_timeout: IDLE_TIMEOUT,
                max_body: MAX_BODY,
            };
            let pool = H1Pool::new(tcp, &authority, &settings)
                .map_err(|e| ClientError::Endpoint(e.to_string()))?;
            Connections::H1(Arc::new(pool))
        } else {
            Connections::Pooled(Arc::new(Pooled::new(
                &uri,
                tcp,
                config,
                IDLE_TIMEOUT,
                extra_roots,
            )?))
        };
        Ok(Self {
            connections,
            scheme,
            authority,
            base_path: endpoint.path().trim_end_matches('/').to_owned(),
            timeout: config.request_timeout,
            auth,
        })
    }

    /// The pooled clients, unless the calls go over the service's own HTTP/1.1 connections.
    #[cfg(test)]
    pub(super) fn pooled(&self) -> Option<&Pooled> {
        match &self.connections {
            Connections::Pooled(pooled) => Some(pooled),
            Connections::H1(_) => None,
        }
    }

    /// The URI of the annotate call; `name` is validated, so it is one safe path per segment.
    pub fn url(&self, name: &AssessmentName) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(self.path(name));
        Uri::from_parts(parts).unwrap_or_default()
    }

    /// The path of the annotate call, the URI an HTTP/1.1 connection sends.
    fn path(&self, name: &AssessmentName) -> PathAndQuery {
        let name = name.as_str();
        let mut path = String::with_capacity(self.base_path.len() + name.len() + 13);
        path.push_str(&self.base_path);
        path.push_str("/v1/");
        path.push_str(name);
        path.push_str(":annotate");
        // A validated name holds only characters a path may hold.
        PathAndQuery::from_maybe_shared(Bytes::from(path))
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }

    /// Serializes a body once; retries reuse the bytes.
    pub fn body(request: &AnnotateRequest) -> Bytes {
        // Serializing plain data with string keys cannot fail.
        Bytes::from(serde_json::to_vec(request).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// One annotate request: the body is shared bytes and the header values are shared, so
    /// a second copy for a retry allocates only its map.
    fn request(uri: Uri, auth: &http::HeaderMap, body: Bytes) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        let fields = request.headers_mut();
        for (name, value) in auth {
            fields.append(name.clone(), value.clone());
        }
        for (name, value) in fixed_headers() {
            fields.insert(name, value);
        }
        request
    }

    /// Sends the call on an HTTP/1.1 connection of its own, or on a pooled client, and
    /// reads the answer: its status, `Retry-After` and (capped) body.
    async fn exchange(
        &self,
        name: &AssessmentName,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Result<(u16, Option<Duration>, Vec<u8>), Transport> {
        match &self.connections {
            Connections::H1(pool) => {
                let reply = pool
                    .call(&self.path(name), headers, body)
                    .await
                    .map_err(|failed| Transport {
                        status: failed.status,
                        ..Transport::from(&failed.error)
                    })?;
                Ok((reply.status, reply.retry_after, reply.body))
            }
            Connections::Pooled(pooled) => {
                let uri = self.url(name);
                // The place on its client is held until the answer is read.
                let (response, _place) = pooled
                    .send(|| Self::request(uri.clone(), headers, body.clone()))
                    .await
                    .map_err(|e| Transport::from(&e))?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                // Read the body (capped) so the connection returns to the pool.
                let bytes = read_capped(response.into_body())
                    .await
                    .map_err(|e| Transport::from(&e).after(status))?;
                Ok((status, retry_after, bytes))
            }
        }
    }

    /// The credentials' headers for one call, within `recaptcha.request_timeout`: a token
    /// source that fails or never answers halts the service (`None` status) rather than
    /// hold every call. Taken before the call's in-flight slot and quota token.
    pub async fn credentials(&self) -> Result<http::HeaderMap, Failure> {
        self.auth
            .headers(self.timeout)
            .await
            .map_err(|e| Halt::no_credentials(e.to_string()))
    }

    /// Sends one annotate call and classifies the answer.
    pub async fn annotate(&self, name: &AssessmentName, body: Bytes) -> CallResult {
        let started = Instant::now();
        match self.credentials().await {
            Ok(headers) => self.annotate_with(name, body, &headers).await,
            Err(failure) => CallResult {
                result: Err(failure),
                status: None,
                elapsed: started.elapsed(),
            },
        }
    }

    /// Sends one annotate call with the credentials' `headers` and classifies the answer.
    pub async fn annotate_with(
        &self,
        name: &AssessmentName,
        body: Bytes,
        headers: &http::HeaderMap,
    ) -> CallResult {
        let started = Instant::now();
        // Boxed: the request future is large, and thousands of calls wait in flight; one
        // allocation per call keeps each waiting event task small.
        let exchange = Box::pin(tokio::time::timeout(
            self.timeout,
            self.exchange(name, headers, &body),
        ))
        .await;
        let answered = exchange.unwrap_or_else(|_| {
            Err(Transport {
                failure: Failure::retry(
                    RetryCause::Timeout,
                    None,
                    "no answer within recaptcha.request_timeout".to_owned(),
                ),
                status: None,
            })
        });
        let (status, retry_after, bytes) = match answered {
            Ok(answer) => answer,
            Err(transport) => {
                return CallResult {
                    status: transport.status,
                    result: Err(transport.failure),
                    elapsed: started.elapsed(),
                };
            }
        };
        let success = (200..300).contains(&status);
        let answer = Answer {
            status,
            retry_after,
            error: if success {
                None
            } else {
                GoogleError::parse(&bytes)
            },
            json_object: success && is_json_object(&bytes),
        };
        CallResult {
            result: classify(&answer),
            status: Some(status),
            elapsed: started.elapsed(),
        }
    }
}

/// The header fields every call carries besides its credentials.
fn fixed_headers() -> [(HeaderName, HeaderValue); 3] {
    [
        (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (
            USER_AGENT,
            HeaderValue::from_static(concat!("recaptcha-annotator/", env!("CARGO_PKG_VERSION"))),
        ),
        (
            HeaderName::from_static("x-goog-api-client"),
            HeaderValue::from_static(API_CLIENT),
        ),
    ]
}

/// The body, or its first [`MAX_BODY`] bytes.
async fn read_capped(mut body: hyper::body::Incoming) -> Result<Vec<u8>, hyper::Error> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        let room = MAX_BODY - read.len();
        read.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if read.len() >= MAX_BODY {
            break;
        }
    }
    Ok(read)
}

/// A call that got no (whole) answer: a connection error, retried.
struct Transport {
    failure: Failure,
    /// The status, when the answer's head came and its body did not.
    status: Option<u16>,
}

impl Transport {
    fn after(self, status: u16) -> Self {
        Self {
            status: Some(status),
            ..self
        }
    }
}

impl<E: std::error::Error + 'static> From<&E> for Transport {
    fn from(err: &E) -> Self {
        // The innermost cause, without the URI (it names the assessment).
        let detail = causes(err)
            .last()
            .map(ToString::to_string)
            .unwrap_or_default();
        // A connect timeout is a timeout, as the whole call's is.
        let timed_out = causes(err).any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        let cause = if timed_out {
            RetryCause::Timeout
        } else {
            RetryCause::Connection
        };
        Self {
            failure: Failure::retry(cause, None, detail),
            status: None,
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
