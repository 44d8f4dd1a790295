//! A local annotate endpoint that behaves like Google's, for the demo, the tests, and users
//! who want to try their producers locally. It shares only `domain/` with the service.
//!
//! - `POST /v1/projects/{p}/assessments/{a}:annotate`: auth as `x-goog-api-key`, `?key=` or a
//!   bearer token; the body is validated against the discovery document (proto3 JSON rules);
//!   200 `{}` or Google's error shape.
//! - `GET /sandbox/requests`: what it accepted; `GET /sandbox/attempts`: every call with its
//!   status and time; `GET /sandbox/stats`; `DELETE /sandbox/requests`: forget.
//! - `POST /sandbox/script`: scripted answers (status, `Retry-After`, latency) and the
//!   default answer; see [`Script`].

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::wire::decode_wire_request;
use crate::domain::assessment::{AssessmentId, ProjectRef};

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
}

/// An accepted request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    pub name: String,
    /// The body exactly as received.
    pub body: Value,
    /// `api_key_header`, `api_key_query`, `bearer` or `none` (open sandbox only).
    pub auth: String,
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
    attempts: Vec<Attempt>,
    script: VecDeque<Scripted>,
    default: DefaultAnswer,
    forbidden: Vec<String>,
}

/// The sandbox's state; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<std::sync::Mutex<Inner>>,
    api_key: Option<Arc<str>>,
    record_limit: usize,
    accepted: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn canonical_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Google's error shape.
pub fn google_error(
    code: u16,
    message: &str,
    reason: Option<&str>,
    retry_after: Option<u64>,
) -> Response {
    let details = reason.map_or_else(Vec::new, |r| {
        vec![json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": r, "domain": "googleapis.com"})]
    });
    let body = json!({"error": {"code": code, "message": message, "status": canonical_status(code), "details": details}});
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

impl Sandbox {
    /// `api_key`: when set, the only key accepted (others get 400 `API_KEY_INVALID`, none at
    /// all 401); bearer tokens are accepted as they are. When unset, any caller is accepted.
    pub fn new(api_key: Option<String>, record_limit: usize) -> Self {
        Self {
            inner: Arc::default(),
            api_key: api_key.map(Arc::from),
            record_limit,
            accepted: Arc::default(),
            calls: Arc::default(),
        }
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
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.lock().recorded.clone()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
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
            .route("/sandbox/script", post(script))
            .with_state(self.clone())
    }
}

async fn annotate(
    State(sandbox): State<Sandbox>,
    Path((project, action)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(id) = action.strip_suffix(":annotate") else {
        return google_error(404, "Method not found.", None, None);
    };
    if ProjectRef::parse(&project).is_err() || AssessmentId::parse(id).is_err() {
        return google_error(400, "Invalid resource name.", None, None);
    }
    let name = format!("projects/{project}/assessments/{id}");
    let (scripted, default) = sandbox.next_answer();
    if let Some(s) = scripted {
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        if s.status != 200 {
            sandbox.attempt(&name, s.status);
            return google_error(s.status, "scripted answer", None, s.retry_after);
        }
    } else {
        let jitter = if default.jitter_ms > 0 {
            rand::random_range(0..=default.jitter_ms)
        } else {
            0
        };
        let delay = default.delay_ms + jitter;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if default.status != 200 {
            sandbox.attempt(&name, default.status);
            return google_error(default.status, "scripted answer", None, default.retry_after);
        }
    }

    let header_key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty());
    let (auth, key) = match (header_key, query.get("key"), bearer) {
        (Some(k), _, _) => ("api_key_header", Some(k)),
        (None, Some(k), _) => ("api_key_query", Some(k.as_str())),
        (None, None, Some(_)) => ("bearer", None),
        // Without a configured key the sandbox is open, as for the unauthenticated request
        // captured from the Rust client.
        (None, None, None) if sandbox.api_key.is_none() => ("none", None),
        (None, None, None) => {
            sandbox.attempt(&name, 401);
            return google_error(
                401,
                "Method doesn't allow unregistered callers. Please use API key or other form of API consumer identity.",
                Some("CREDENTIALS_MISSING"),
                None,
            );
        }
    };
    if let (Some(expected), Some(given)) = (&sandbox.api_key, key)
        && **expected != *given
    {
        sandbox.attempt(&name, 400);
        return google_error(
            400,
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
            None,
        );
    }
    let refused = sandbox
        .lock()
        .forbidden
        .iter()
        .any(|prefix| name.starts_with(prefix.as_str()));
    if refused {
        sandbox.attempt(&name, 403);
        return google_error(
            403,
            "Permission 'recaptchaenterprise.assessments.annotate' denied on resource (or it may not exist).",
            Some("IAM_PERMISSION_DENIED"),
            None,
        );
    }
    for alt in [query.get("alt"), query.get("$alt")].into_iter().flatten() {
        if !matches!(alt.as_str(), "json" | "json;enum-encoding=int") {
            sandbox.attempt(&name, 400);
            return google_error(400, "Invalid alt parameter.", None, None);
        }
    }
    if let Err(e) = decode_wire_request(&body) {
        sandbox.attempt(&name, 400);
        return google_error(400, &e.to_string(), None, None);
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    sandbox.attempt(&name, 200);
    {
        let mut inner = sandbox.lock();
        if inner.recorded.len() < sandbox.record_limit {
            inner.recorded.push(Recorded {
                name,
                body,
                auth: auth.to_owned(),
                at_ms: now_ms(),
            });
        }
        // Counted once recorded, so a reader that sees the count also sees the record.
        sandbox.accepted.fetch_add(1, Ordering::Relaxed);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        "{}\n",
    )
        .into_response()
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

/// Serves on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, sandbox: Sandbox) -> std::io::Result<()> {
    axum::serve(listener, sandbox.router()).await
}
