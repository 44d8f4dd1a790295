//! `POST {endpoint}/v1/{name}:annotate` over HTTPS with a pooled client.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::auth::{API_CLIENT, Auth};
use crate::config::RecaptchaConfig;
use crate::domain::api::AnnotateRequest;
use crate::domain::assessment::AssessmentName;
use crate::failure::{Answer, Failure, GoogleError, Halt, RetryCause, classify, parse_retry_after};

/// The most of a response body that is read: Google's error bodies are small, and a wrong
/// endpoint can answer with anything.
const MAX_BODY: usize = 64 * 1024;

/// Calls in flight per client before the next client is used. Google's front ends allow
/// 100 concurrent streams per HTTP/2 connection; filling one connection before opening the
/// next puts more streams in each of its writes and wake-ups than spreading calls evenly
/// (README, Benchmark: about 7% less CPU per event at 1,024 in flight).
const CALLS_PER_CLIENT: usize = 100;

#[derive(Clone)]
pub struct AnnotateClient {
    /// Independent clients, filled in order (see [`CALLS_PER_CLIENT`]): an HTTP/2 client multiplexes on one connection, and
    /// servers cap the streams per connection (100-200), so several are needed to keep
    /// thousands of calls in flight.
    http: Arc<[reqwest::Client]>,
    /// Calls in flight on each client: a call goes to the first with fewer than
    /// [`CALLS_PER_CLIENT`], else to the least busy.
    loads: Arc<[AtomicUsize]>,
    /// The endpoint, parsed once: each call's URL is a copy with its path set, so the host
    /// (IDNA included) is not parsed again for every call.
    base: reqwest::Url,
    /// The endpoint's own path without its trailing `/` (empty for Google's).
    base_path: String,
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
    ) -> reqwest::Result<Self> {
        let http = (0..config.clients.max(1))
            .map(|_| {
                let mut builder = reqwest::Client::builder()
                    .timeout(config.request_timeout)
                    .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_max_idle_per_host(config.max_idle_connections)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .tcp_nodelay(true)
                    .user_agent(concat!("recaptcha-annotator/", env!("CARGO_PKG_VERSION")))
                    .default_headers(HeaderMap::from_iter([(
                        HeaderName::from_static("x-goog-api-client"),
                        HeaderValue::from_static(API_CLIENT),
                    )]));
                if config.http2_prior_knowledge && endpoint.scheme() == "http" {
                    builder = builder.http2_prior_knowledge();
                }
                builder.build()
            })
            .collect::<reqwest::Result<Vec<_>>>()?;
        Ok(Self {
            loads: (0..http.len()).map(|_| AtomicUsize::new(0)).collect(),
            http: http.into(),
            base: endpoint.clone(),
            base_path: endpoint.path().trim_end_matches('/').to_owned(),
            auth,
        })
    }

    /// The URL of the annotate call; `name` is validated, so it is one safe path per segment.
    pub fn url(&self, name: &AssessmentName) -> reqwest::Url {
        let name = name.as_str();
        let mut path = String::with_capacity(self.base_path.len() + name.len() + 13);
        path.push_str(&self.base_path);
        path.push_str("/v1/");
        path.push_str(name);
        path.push_str(":annotate");
        let mut url = self.base.clone();
        url.set_path(&path);
        url
    }

    /// Serializes a body once; retries reuse the bytes.
    pub fn body(request: &AnnotateRequest) -> Bytes {
        // Serializing plain data with string keys cannot fail.
        Bytes::from(serde_json::to_vec(request).unwrap_or_else(|_| b"{}".to_vec()))
    }

    /// The client for the next call, counted in flight on it until the guard drops.
    fn pick(&self) -> (&reqwest::Client, InFlight<'_>) {
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
        let (client, _in_flight) = self.pick();
        // Boxed: reqwest's request future is large, and thousands of calls wait in flight;
        // one allocation per call keeps each waiting event task small.
        let response = Box::pin(
            client
                .post(self.url(name))
                .headers(headers)
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body)
                .send(),
        )
        .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return CallResult {
                    result: Err(transport_failure(&e)),
                    status: None,
                    elapsed: started.elapsed(),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read the body (capped) so the connection returns to the pool.
        let bytes = match Box::pin(read_capped(response)).await {
            Ok(b) => b,
            Err(e) => {
                return CallResult {
                    result: Err(transport_failure(&e)),
                    status: Some(status),
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

/// One call counted in flight until dropped (answered, failed or abandoned).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body, or its first [`MAX_BODY`] bytes.
async fn read_capped(mut response: reqwest::Response) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

/// A request that got no answer: a timeout or a connection error, both retried.
fn transport_failure(err: &reqwest::Error) -> Failure {
    let cause = if err.is_timeout() {
        RetryCause::Timeout
    } else {
        RetryCause::Connection
    };
    // The innermost cause, without the URL (it names the assessment).
    let mut detail = None;
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        detail = Some(inner.to_string());
        source = inner.source();
    }
    Failure::retry(
        cause,
        None,
        detail.unwrap_or_else(|| cause.as_str().to_owned()),
    )
}

#[cfg(test)]
mod tests {
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
            assert_eq!(client.url(&name).as_str(), url);
        }
    }

    #[test]
    fn calls_fill_one_client_before_the_next_and_then_go_to_the_least_busy() {
        let config = RecaptchaConfig {
            clients: 3,
            ..RecaptchaConfig::default()
        };
        let endpoint = reqwest::Url::parse("http://127.0.0.1:1").unwrap();
        let client = AnnotateClient::new(&endpoint, Auth::None, &config).unwrap();
        let index =
            |c: &reqwest::Client| client.http.iter().position(|h| std::ptr::eq(h, c)).unwrap();
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
}
