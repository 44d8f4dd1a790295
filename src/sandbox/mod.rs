//! A local annotate endpoint that behaves like Google's, for the demo, the tests, and users
//! who want to try their producers locally. It shares only `domain/` with the service.
//!
//! - `POST /v1/projects/{p}/assessments`: `assessments.create`, a new assessment name.
//! - `POST /v1/projects/{p}/assessments/{a}:annotate`: auth as `x-goog-api-key`, `?key=` or a
//!   bearer token (verified once [`identity`] is told to); the body is validated against the discovery document (proto3 JSON rules,
//!   [`wire`]); 200 `{}` or Google's error shape. In strict mode ([`Sandbox::strict`]) 403
//!   for a project the key does not own and 404 for an assessment it never created.
//! - `GET /sandbox/requests`: what it accepted; `GET /sandbox/attempts`: every call with its
//!   status and time; `GET /sandbox/stats`; `GET /sandbox/tokens`; `DELETE /sandbox/requests`:
//!   forget.
//! - `POST /token` and the metadata server's token path: see [`identity`].
//! - `POST /sandbox/script`: scripted answers (status, `Retry-After`, latency) and the
//!   default answer, and names answered 403; see [`Script`].

mod google;
pub mod identity;
pub mod wire;

pub use self::google::google_error;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::google::{annotate, create};

/// One scripted answer, used `times` times (FIFO), before the default applies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scripted {
    pub status: u16,
    #[serde(default = "one")]
    pub times: u32,
    /// Seconds, sent as `Retry-After`.
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub delay_ms: u64,
}

fn one() -> u32 {
    1
}

/// The default answer when no scripted one is queued: `status` 200 means "validate and accept".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultAnswer {
    pub status: u16,
    /// Fixed added latency.
    #[serde(default)]
    pub delay_ms: u64,
    /// Uniform random extra latency on top, up to this much.
    #[serde(default)]
    pub jitter_ms: u64,
    #[serde(default)]
    pub retry_after: Option<u64>,
}

impl Default for DefaultAnswer {
    fn default() -> Self {
        Self {
            status: 200,
            delay_ms: 0,
            jitter_ms: 0,
            retry_after: None,
        }
    }
}

/// `POST /sandbox/script` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    #[serde(default)]
    pub responses: Vec<Scripted>,
    #[serde(default)]
    pub default: Option<DefaultAnswer>,
    /// Names refused with 403 `PERMISSION_DENIED` (`IAM_PERMISSION_DENIED`): a project
    /// (`projects/p/`) or one assessment. Replaces the list when given.
    #[serde(default)]
    pub forbidden: Option<Vec<String>>,
    /// Annotate calls per second each project may make, as Google's per-project quota:
    /// a call above it in the last second is answered 429 `RESOURCE_EXHAUSTED`
    /// (`RATE_LIMIT_EXCEEDED`). `0` removes the quota; unset leaves it as it is.
    #[serde(default)]
    pub quota: Option<u32>,
}

/// An accepted request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub name: String,
    /// The body exactly as received.
    pub body: Value,
    /// `api_key_header`, `api_key_query`, `bearer` or `none` (open sandbox only).
    pub auth: String,
    /// `x-goog-api-client`, as sent.
    #[serde(default)]
    pub api_client: Option<String>,
    /// `x-goog-user-project`, as sent.
    #[serde(default)]
    pub user_project: Option<String>,
    pub at_ms: u64,
}

/// One call, accepted or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub name: String,
    pub status: u16,
    pub at_ms: u64,
}

#[derive(Default)]
struct Inner {
    recorded: Vec<Recorded>,
    /// When each annotate call arrived (ms since the epoch), before any scripted delay.
    arrivals: Vec<u64>,
    attempts: Vec<Attempt>,
    script: VecDeque<Scripted>,
    default: DefaultAnswer,
    forbidden: Vec<String>,
    /// `Script::quota`, and per project when its calls within the quota were made (ms).
    quota: Option<u32>,
    quota_windows: std::collections::HashMap<String, VecDeque<u64>>,
    /// Assessment names made by `create` (strict mode annotates only these).
    created: std::collections::HashSet<String>,
}

/// The sandbox's state; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<std::sync::Mutex<Inner>>,
    api_key: Option<Arc<str>>,
    /// Strict mode: the projects the key owns; annotate answers 403 for others and 404 for
    /// assessments it never created.
    strict: Option<Arc<[String]>>,
    record_limit: usize,
    accepted: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    identity: Arc<identity::Identity>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sandbox {
    /// `api_key`: when set, the only key accepted (others get 400 `API_KEY_INVALID`, none at
    /// all 401); bearer tokens are accepted as they are. When unset, any caller is accepted.
    pub fn new(api_key: Option<String>, record_limit: usize) -> Self {
        Self {
            inner: Arc::default(),
            api_key: api_key.map(Arc::from),
            strict: None,
            record_limit,
            accepted: Arc::default(),
            calls: Arc::default(),
            identity: Arc::default(),
        }
    }

    /// Strict mode, as Google answers: `projects` are the ones the key owns; annotate
    /// answers 403 `PERMISSION_DENIED` for other projects and 404 `NOT_FOUND` for
    /// assessments this sandbox never created.
    #[must_use]
    pub fn strict(mut self, projects: Vec<String>) -> Self {
        self.strict = Some(projects.into());
        self
    }

    /// Tokens: the ones issued here, trusted service accounts, counters.
    pub fn identity(&self) -> &identity::Identity {
        &self.identity
    }

    /// Verifies bearer tokens from now on, trusting the service account whose public key is
    /// `pem` besides the tokens this sandbox issues.
    pub fn trust_service_account(&self, pem: &str) -> Result<(), String> {
        self.identity.trust(pem)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_script(&self, script: Script) {
        let mut inner = self.lock();
        inner.script = script
            .responses
            .into_iter()
            .filter(|s| s.times > 0)
            .collect();
        if let Some(d) = script.default {
            inner.default = d;
        }
        if let Some(forbidden) = script.forbidden {
            inner.forbidden = forbidden;
        }
        if let Some(quota) = script.quota {
            inner.quota = (quota > 0).then_some(quota);
            inner.quota_windows.clear();
        }
    }

    /// Whether a call of `project` now is over its quota; one within it is counted.
    fn over_quota(&self, project: &str) -> bool {
        let mut inner = self.lock();
        let Some(quota) = inner.quota else {
            return false;
        };
        let now = now_ms();
        let window = inner.quota_windows.entry(project.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= 1000)
        {
            window.pop_front();
        }
        if window.len() >= quota as usize {
            return true;
        }
        window.push_back(now);
        false
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().recorded.clone()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// When each annotate call arrived (ms since the epoch), in order: the rate the endpoint
    /// sees.
    pub fn arrivals(&self) -> Vec<u64> {
        self.lock().arrivals.clone()
    }

    /// The most annotate calls that arrived within any one second: the peak rate the
    /// endpoint saw.
    pub fn busiest_second(&self) -> usize {
        busiest_second(&self.arrivals())
    }

    fn arrived(&self) {
        let mut inner = self.lock();
        if inner.arrivals.len() < self.record_limit {
            inner.arrivals.push(now_ms());
        }
    }

    pub fn accepted_count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.recorded.clear();
        inner.attempts.clear();
    }

    fn next_answer(&self) -> (Option<Scripted>, DefaultAnswer) {
        let mut inner = self.lock();
        let scripted = match inner.script.front_mut() {
            Some(front) if front.times > 1 => {
                front.times -= 1;
                Some(front.clone())
            }
            Some(_) => inner.script.pop_front(),
            None => None,
        };
        (scripted, inner.default.clone())
    }

    fn attempt(&self, name: &str, status: u16) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.attempts.len() < self.record_limit {
            inner.attempts.push(Attempt {
                name: name.to_owned(),
                status,
                at_ms: now_ms(),
            });
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/projects/{project}/assessments", post(create))
            .route(
                "/v1/projects/{project}/assessments/{action}",
                post(annotate),
            )
            .route(
                "/sandbox/requests",
                get(list_requests).delete(clear_requests),
            )
            .route("/sandbox/attempts", get(list_attempts))
            .route("/sandbox/stats", get(stats))
            .route("/sandbox/tokens", get(identity::counts))
            .route("/token", post(identity::token))
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(identity::metadata_token),
            )
            .route("/sandbox/script", post(script))
            .with_state(self.clone())
    }
}

async fn list_requests(State(sandbox): State<Sandbox>) -> Json<Vec<Recorded>> {
    Json(sandbox.recorded())
}

async fn list_attempts(State(sandbox): State<Sandbox>) -> Json<Vec<Attempt>> {
    Json(sandbox.attempts())
}

async fn clear_requests(State(sandbox): State<Sandbox>) -> StatusCode {
    sandbox.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(json!({
        "accepted": sandbox.accepted.load(Ordering::Relaxed),
        "calls": sandbox.calls.load(Ordering::Relaxed),
    }))
}

async fn script(State(sandbox): State<Sandbox>, Json(script): Json<Script>) -> StatusCode {
    sandbox.set_script(script);
    StatusCode::NO_CONTENT
}

/// The most of `arrivals` (ms) within any one second.
pub fn busiest_second(arrivals: &[u64]) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= 1000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Serves on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, sandbox: Sandbox) -> std::io::Result<()> {
    axum::serve(listener, sandbox.router()).await
}
