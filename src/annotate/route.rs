//! How the annotate calls reach an `https` endpoint: directly, or through the proxy the
//! environment names (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, read as curl and reqwest read
//! them), in an HTTP CONNECT tunnel with the endpoint's TLS inside it. An `http` endpoint
//! (a local sandbox) is always reached directly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{Scheme, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A proxy the tunnel cannot use, named by its host and port only (its address may carry
/// a password).
#[derive(Debug, thiserror::Error)]
#[error("the proxy at {0} must be an http:// proxy (the endpoint's TLS runs inside its tunnel)")]
pub struct UnusableProxy(String);

#[derive(Clone)]
pub enum Route {
    Direct(HttpConnector),
    /// CONNECT through the proxy at this address.
    Tunnel(Tunnel<HttpConnector>),
}

impl Route {
    /// The route to `endpoint` that `proxies` (the environment's, in the service) choose.
    pub fn for_endpoint(
        endpoint: &Uri,
        proxies: &Matcher,
        tcp: HttpConnector,
    ) -> Result<Self, UnusableProxy> {
        if endpoint.scheme() != Some(&Scheme::HTTPS) {
            return Ok(Self::Direct(tcp));
        }
        let Some(proxy) = proxies.intercept(endpoint) else {
            return Ok(Self::Direct(tcp));
        };
        let address = proxy
            .uri()
            .authority()
            .map(|a| format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)))
            .unwrap_or_default();
        if proxy.uri().scheme() != Some(&Scheme::HTTP) {
            return Err(UnusableProxy(address));
        }
        let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
        if let Some(auth) = proxy.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        tracing::info!(proxy = %address, "annotate calls go through the proxy the environment names");
        Ok(Self::Tunnel(tunnel))
    }
}

impl Service<Uri> for Route {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    /// Boxed: connections are few and long-lived.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Direct(tcp) => tcp.poll_ready(cx).map_err(Into::into),
            Self::Tunnel(tunnel) => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Self::Direct(tcp) => {
                let connecting = tcp.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Self::Tunnel(tunnel) => {
                let connecting = tunnel.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(endpoint: &str, proxies: &Matcher) -> Result<Route, UnusableProxy> {
        Route::for_endpoint(&endpoint.parse().unwrap(), proxies, HttpConnector::new())
    }

    #[test]
    fn an_https_endpoint_goes_through_the_named_proxy_unless_it_is_excluded() {
        let google = "https://recaptchaenterprise.googleapis.com";
        let proxies = Matcher::builder()
            .https("http://user:pw@proxy.internal:3128")
            .build();
        assert!(matches!(route(google, &proxies), Ok(Route::Tunnel(_))));
        let excluded = Matcher::builder()
            .https("http://proxy.internal:3128")
            .no("googleapis.com")
            .build();
        assert!(matches!(route(google, &excluded), Ok(Route::Direct(_))));
        assert!(matches!(
            route(google, &Matcher::builder().build()),
            Ok(Route::Direct(_))
        ));
    }

    #[test]
    fn a_local_http_endpoint_is_reached_directly() {
        let proxies = Matcher::builder().all("http://proxy.internal:3128").build();
        assert!(matches!(
            route("http://127.0.0.1:8085", &proxies),
            Ok(Route::Direct(_))
        ));
    }

    #[test]
    fn an_https_proxy_is_refused_without_showing_its_password() {
        let proxies = Matcher::builder()
            .https("https://user:secret@proxy.internal:3129")
            .build();
        let Err(e) = route("https://recaptchaenterprise.googleapis.com", &proxies) else {
            panic!("an https proxy is refused");
        };
        let e = e.to_string();
        assert!(e.contains("proxy.internal:3129"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}
