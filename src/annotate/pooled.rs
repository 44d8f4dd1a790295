//! hyper-util's pooled clients, for HTTP/2 (by ALPN on an `https` endpoint, or by prior
//! knowledge) and for an `https` endpoint that offers only HTTP/1.1: several clients, each
//! filled to [`CALLS_PER_CLIENT`] calls before the next is used.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Scheme, Uri};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::route::{Route, UnusableProxy};
use crate::config::RecaptchaConfig;
use crate::failure::causes;

/// Why the pooled clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PooledError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("proxy: {0}")]
    Proxy(#[from] UnusableProxy),
}

/// Calls in flight per client before the next client is used. Google's front ends allow
/// 100 concurrent streams per HTTP/2 connection; filling one connection before opening the
/// next puts more streams in each of its writes and wake-ups than spreading calls evenly
/// (README, Benchmark: about 7% less CPU per event at 1,024 in flight).
pub const CALLS_PER_CLIENT: usize = 100;

/// One pooled client: HTTP/2 when the server offers it (ALPN, or prior knowledge), else
/// HTTP/1.1 with a connection per call in flight.
pub type Http = Client<hyper_rustls::HttpsConnector<Route>, Full<Bytes>>;

pub struct Pooled {
    /// Independent clients, filled in order: an HTTP/2 client multiplexes on one
    /// connection, and servers cap the streams per connection (100-200), so several are
    /// needed to keep thousands of calls in flight.
    http: Box<[Http]>,
    /// Calls in flight on each client: a call goes to the first with fewer than
    /// [`CALLS_PER_CLIENT`], else to the least busy.
    loads: Box<[AtomicUsize]>,
}

/// One call counted in flight on its client until dropped (answered, failed or abandoned).
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pooled {
    /// `recaptcha.clients` pooled clients to `endpoint`, sharing one connector over `tcp`;
    /// the certificates are checked against the system's trust store and `extra_roots`.
    pub fn new(
        endpoint: &Uri,
        tcp: HttpConnector,
        config: &RecaptchaConfig,
        idle_timeout: Duration,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Self, PooledError> {
        let route = Route::for_endpoint(endpoint, &Matcher::from_env(), tcp)?;
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
            .pool_idle_timeout(idle_timeout);
        if config.http2_prior_knowledge && endpoint.scheme() == Some(&Scheme::HTTP) {
            builder.http2_only(true);
        }
        let http: Vec<Http> = (0..config.clients.max(1))
            .map(|_| builder.build(connector.clone()))
            .collect();
        Ok(Self {
            loads: http.iter().map(|_| AtomicUsize::new(0)).collect(),
            http: http.into(),
        })
    }

    /// Sends the request `request` makes on the client [`Pooled::pick`] chooses; the
    /// answer's head is back, and the call stays counted on its client until the returned
    /// place is dropped.
    pub async fn send(
        &self,
        request: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, InFlight<'_>), Error> {
        let (client, place) = self.pick();
        let response = match client.request(request()).await {
            Ok(response) => response,
            // The server closed the connection gracefully or refused the stream before
            // reading the call: it was not taken, so it goes again at once on another
            // stream (as reqwest did), not after the event's backoff.
            Err(e) if never_taken(&e) => client.request(request()).await?,
            Err(e) => return Err(e),
        };
        Ok((response, place))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotate::AnnotateClient;
    use crate::annotate::auth::Auth;
    use crate::config::RecaptchaConfig;

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
        let pooled = client.pooled().expect("pooled clients");
        let index = |c: &Http| pooled.http.iter().position(|h| std::ptr::eq(h, c)).unwrap();
        let mut held: Vec<_> = (0..CALLS_PER_CLIENT).map(|_| pooled.pick()).collect();
        assert!(held.iter().all(|(c, _)| index(c) == 0));
        held.push(pooled.pick());
        assert_eq!(index(held.last().unwrap().0), 1, "the first client is full");
        // Calls on the first client end: it takes the next call again.
        held.truncate(10);
        assert_eq!(index(pooled.pick().0), 0);
        // Every client full: the least busy one.
        let more: Vec<_> = (0..3 * CALLS_PER_CLIENT).map(|_| pooled.pick()).collect();
        let loads: Vec<usize> = pooled
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
        assert!(pooled.loads.iter().all(|l| l.load(Ordering::Relaxed) == 0));
    }
}
