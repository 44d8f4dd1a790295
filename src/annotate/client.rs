//! `POST {endpoint}/v1/{name}:annotate` over HTTPS with pooled connections.
//!
//! The calls go out through hyper's pooled client directly, not through reqwest: reqwest's
//! layers (redirects, retries, the URL parsed again per call, a request clone kept for each)
//! cost about 10 KB per call in flight and a sixth of the service's CPU per event
//! (README, Benchmark). Proxies from the environment still apply (see [`Route`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::auth::{API_CLIENT, Auth};
use super::h1::{H1Pool, Lease};
use super::route::{Route, UnusableProxy};
use crate::config::RecaptchaConfig;
use crate::domain::api::AnnotateRequest;
use crate::domain::assessment::AssessmentName;
use crate::failure::{
    Answer, Failure, GoogleError, Halt, RetryCause, causes, classify, parse_retry_after,
};

/// The most of a response body that is read: Google's error bodies are small, and a wrong
/// endpoint can answer with anything.
const MAX_BODY: usize = 64 * 1024;

/// Calls in flight per client before the next client is used. Google's front ends allow
/// 100 concurrent streams per HTTP/2 connection; filling one connection before opening the
/// next puts more streams in each of its writes and wake-ups than spreading calls evenly
/// (README, Benchmark: about 7% less CPU per event at 1,024 in flight).
const CALLS_PER_CLIENT: usize = 100;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One pooled client: HTTP/2 when the server offers it (ALPN, or prior knowledge), else
/// HTTP/1.1 with a connection per call in flight.
type Http = Client<hyper_rustls::HttpsConnector<Route>, Full<Bytes>>;

/// Why the HTTP clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("recaptcha.endpoint: {0}")]
    Endpoint(String),
    #[error("proxy: {0}")]
    Proxy(#[from] UnusableProxy),
}

#[derive(Clone)]
pub struct AnnotateClient {
    /// Independent clients, filled in order (see [`CALLS_PER_CLIENT`]): an HTTP/2 client multiplexes on one connection, and
    /// servers cap the streams per connection (100-200), so several are needed to keep
    /// thousands of calls in flight.
    http: Arc<[Http]>,
    /// Calls in flight on each client: a call goes to the first with fewer than
    /// [`CALLS_PER_CLIENT`], else to the least busy.
    loads: Arc<[AtomicUsize]>,
    /// A plain `http` endpoint without `http2_prior_knowledge` is spoken to over HTTP/1.1
    /// through this pool instead of `http` (which is then empty).
    h1: Option<Arc<H1Pool>>,
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
        if scheme == Scheme::HTTP && !config.http2_prior_knowledge {
            // As many idle as the pooled clients would keep together.
            let pool = H1Pool::new(
                tcp,
                &authority,
                config
                    .max_idle_connections
                    .saturating_mul(config.clients.max(1)),
                IDLE_TIMEOUT,
            )
            .map_err(|e| ClientError::Endpoint(e.to_string()))?;
            return Ok(Self {
                http: Arc::new([]),
                loads: Arc::new([]),
                h1: Some(Arc::new(pool)),
                scheme,
                authority,
                base_path: endpoint.path().trim_end_matches('/').to_owned(),
                timeout: config.request_timeout,
                auth,
            });
        }
        let route = Route::for_endpoint(&uri, &Matcher::from_env(), tcp)?;
        // The system's trust store and revocation checks, as reqwest uses them.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)?,
            ))
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(route);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(config.max_idle_connections)
            .pool_idle_timeout(IDLE_TIMEOUT);
        if config.http2_prior_knowledge && scheme == Scheme::HTTP {
            builder.http2_only(true);
        }
        let http: Vec<Http> = (0..config.clients.max(1))
            .map(|_| builder.build(connector.clone()))
            .collect();
        Ok(Self {
            loads: (0..http.len()).map(|_| AtomicUsize::new(0)).collect(),
            http: http.into(),
            h1: None,
            scheme,
            authority,
            base_path: endpoint.path().trim_end_matches('/').to_owned(),
            timeout: config.request_timeout,
            auth,
        })
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

    /// The client for the next call, counted in flight on it until the guard drops.
    fn pick(&self) -> (&Http, InFlight<'_>) {
        // A place under the cap is claimed in one step, so two calls never both take the
        // last one.
        let under_cap = self.loads.iter().position(|load| {
            load.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < CALLS_PER_CLIENT).then_some(l + 1)
            })
            .is_ok()
        });
        let chosen = under_cap.unwrap_or_else(|| {
            let least = (0..self.loads.len())
                .min_by_key(|&i| self.loads[i].load(Ordering::Relaxed))
                .unwrap_or(0);
            self.loads[least].fetch_add(1, Ordering::Relaxed);
            least
        });
        (&self.http[chosen], InFlight(&self.loads[chosen]))
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
        fields.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        fields.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("recaptcha-annotator/", env!("CARGO_PKG_VERSION"))),
        );
        fields.insert(
            HeaderName::from_static("x-goog-api-client"),
            HeaderValue::from_static(API_CLIENT),
        );
        request
    }

    /// Sends the call on an HTTP/1.1 connection of its own, or on the pooled client
    /// [`AnnotateClient::pick`] chooses; the answer's head is back.
    async fn send(
        &self,
        name: &AssessmentName,
        headers: &http::HeaderMap,
        body: &Bytes,
    ) -> Result<(http::Response<hyper::body::Incoming>, Held<'_>), Transport> {
        if let Some(pool) = &self.h1 {
            let request = Self::request(Uri::from(self.path(name)), headers, body.clone());
            let (response, lease) = pool.send(request).await.map_err(|e| Transport::from(&e))?;
            return Ok((response, Held::Connection(lease)));
        }
        let (client, in_flight) = self.pick();
        let uri = self.url(name);
        let request = || Self::request(uri.clone(), headers, body.clone());
        let response = match client.request(request()).await {
            Ok(response) => response,
            // The server closed the connection gracefully or refused the stream before
            // reading the call: it was not taken, so it goes again at once on another
            // stream (as reqwest did), not after the event's backoff.
            Err(e) if never_taken(&e) => client
                .request(request())
                .await
                .map_err(|e| Transport::from(&e))?,
            Err(e) => return Err(Transport::from(&e)),
        };
        Ok((response, Held::Stream { _place: in_flight }))
    }

    /// Sends one annotate call and classifies the answer.
    pub async fn annotate(&self, name: &AssessmentName, body: Bytes) -> CallResult {
        let started = Instant::now();
        let headers = match self.auth.headers().await {
            Ok(h) => h,
            Err(e) => {
                return CallResult {
                    result: Err(Halt::no_credentials(e.to_string())),
                    status: None,
                    elapsed: started.elapsed(),
                };
            }
        };
        // Boxed: the request future is large, and thousands of calls wait in flight; one
        // allocation per call keeps each waiting event task small.
        let exchange = Box::pin(tokio::time::timeout(self.timeout, async {
            let (response, held) = self.send(name, &headers, &body).await?;
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
            if let Held::Connection(lease) = held {
                lease.release();
            }
            Ok::<_, Transport>((status, retry_after, bytes))
        }))
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
        let error = if (200..300).contains(&status) {
            None
        } else {
            GoogleError::parse(&bytes)
        };
        let answer = Answer {
            status,
            retry_after,
            error,
        };
        CallResult {
            result: classify(&answer),
            status: Some(status),
            elapsed: started.elapsed(),
        }
    }
}

/// What a call holds until its answer is read.
enum Held<'a> {
    /// An HTTP/1.1 connection of its own, given back once the answer is read.
    Connection(Lease<'a>),
    /// Its place on one of the pooled clients.
    Stream { _place: InFlight<'a> },
}

/// One call counted in flight until dropped (answered, failed or abandoned).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// Whether an HTTP/2 server said it did not take the call: a graceful GOAWAY (`NO_ERROR`,
/// as Google's front ends send when they recycle a connection) or `REFUSED_STREAM`.
fn never_taken(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|e| {
        e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote()
                && match h2.reason() {
                    Some(h2::Reason::NO_ERROR) => h2.is_go_away(),
                    Some(h2::Reason::REFUSED_STREAM) => true,
                    _ => false,
                }
        })
    })
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
