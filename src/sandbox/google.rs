//! The endpoints that answer as Google's do: `assessments.create` and
//! `assessments.annotate`, with Google's authentication, error shapes and (in strict mode)
//! its 403 and 404 semantics.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::wire::decode_wire_request;
use super::{Recorded, Sandbox, now_ms};
use crate::domain::assessment::{AssessmentId, ProjectRef};

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

/// The `ErrorInfo` reason Google gives with a status, for scripted answers.
fn scripted_reason(status: u16) -> Option<&'static str> {
    match status {
        401 => Some("CREDENTIALS_MISSING"),
        403 => Some("IAM_PERMISSION_DENIED"),
        429 => Some("RATE_LIMIT_EXCEEDED"),
        _ => None,
    }
}

/// 403 `PERMISSION_DENIED` with `IAM_PERMISSION_DENIED`, as Google answers a call the key's
/// principal may not make on `resource`.
fn permission_denied(sandbox: &Sandbox, name: &str, method: &str, resource: &str) -> Response {
    sandbox.attempt(name, 403);
    google_error(
        403,
        &format!(
            "Permission 'recaptchaenterprise.assessments.{method}' denied on resource '{resource}' (or it may not exist)."
        ),
        Some("IAM_PERMISSION_DENIED"),
        None,
    )
}

/// A scripted failure, recorded as an attempt, in Google's error shape.
fn scripted_error(
    sandbox: &Sandbox,
    name: &str,
    status: u16,
    retry_after: Option<u64>,
) -> Response {
    sandbox.attempt(name, status);
    google_error(
        status,
        "scripted answer",
        scripted_reason(status),
        retry_after,
    )
}

/// Google's error shape, with `ErrorInfo` for `reason` and `RetryInfo` (and `Retry-After`)
/// for `retry_after`.
pub fn google_error(
    code: u16,
    message: &str,
    reason: Option<&str>,
    retry_after: Option<u64>,
) -> Response {
    let mut details: Vec<Value> = reason
        .map(|r| json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": r, "domain": "googleapis.com"}))
        .into_iter()
        .collect();
    if let Some(secs) = retry_after {
        details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}));
    }
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

pub(super) async fn annotate(
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
    sandbox.arrived();
    let (scripted, default) = sandbox.next_answer();
    if let Some(s) = scripted {
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        if s.status != 200 {
            return scripted_error(&sandbox, &name, s.status, s.retry_after);
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
            return scripted_error(&sandbox, &name, default.status, default.retry_after);
        }
    }

    let auth = match authenticate(&sandbox, &name, &headers, &query) {
        Ok(auth) => auth,
        Err(refused) => return *refused,
    };
    if sandbox.over_quota(&project) {
        sandbox.attempt(&name, 429);
        return google_error(
            429,
            "Quota exceeded for quota metric 'Annotate requests' and limit 'Annotate requests per second per project' of service 'recaptchaenterprise.googleapis.com'.",
            Some("RATE_LIMIT_EXCEEDED"),
            None,
        );
    }
    if let Some(owned) = &sandbox.strict {
        if !owned.contains(&project) {
            return permission_denied(&sandbox, &name, "annotate", &format!("projects/{project}"));
        }
        if !sandbox.lock().created.contains(&name) {
            sandbox.attempt(&name, 404);
            return google_error(404, "Assessment not found.", None, None);
        }
    }
    let refused = sandbox
        .lock()
        .forbidden
        .iter()
        .any(|prefix| name.starts_with(prefix.as_str()));
    if refused {
        return permission_denied(&sandbox, &name, "annotate", &name);
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
                api_client: header_text(&headers, "x-goog-api-client"),
                user_project: header_text(&headers, "x-goog-user-project"),
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

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Google's authentication: `x-goog-api-key`, `?key=` or a bearer token; with a configured
/// key, another key is 400 `API_KEY_INVALID` and none at all 401. `Ok` names the form used.
fn authenticate(
    sandbox: &Sandbox,
    name: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<&'static str, Box<Response>> {
    let header_key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty());
    let (auth, key) = match (header_key, query.get("key"), bearer) {
        (Some(k), _, _) => ("api_key_header", Some(k)),
        (None, Some(k), _) => ("api_key_query", Some(k.as_str())),
        (None, None, Some(token)) => match sandbox.identity().check(token) {
            Ok(()) => ("bearer", None),
            Err(refusal) => {
                sandbox.attempt(name, 401);
                return Err(Box::new(google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    Some(refusal.reason()),
                    None,
                )));
            }
        },
        // Without a configured key the sandbox is open, as for the unauthenticated request
        // captured from the Rust client.
        (None, None, None) if sandbox.api_key.is_none() => ("none", None),
        (None, None, None) => {
            sandbox.attempt(name, 401);
            return Err(Box::new(google_error(
                401,
                "Method doesn't allow unregistered callers. Please use API key or other form of API consumer identity.",
                Some("CREDENTIALS_MISSING"),
                None,
            )));
        }
    };
    if let (Some(expected), Some(given)) = (&sandbox.api_key, key)
        && **expected != *given
    {
        sandbox.attempt(name, 400);
        return Err(Box::new(google_error(
            400,
            "API key not valid. Please pass a valid API key.",
            Some("API_KEY_INVALID"),
            None,
        )));
    }
    Ok(auth)
}

/// `POST /v1/projects/{project}/assessments`: a new assessment, named as Google names them.
pub(super) async fn create(
    State(sandbox): State<Sandbox>,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if ProjectRef::parse(&project).is_err() {
        return google_error(400, "Invalid resource name.", None, None);
    }
    let parent = format!("projects/{project}/assessments");
    if let Err(refused) = authenticate(&sandbox, &parent, &headers, &query) {
        return *refused;
    }
    if let Some(owned) = &sandbox.strict
        && !owned.contains(&project)
    {
        return permission_denied(&sandbox, &parent, "create", &format!("projects/{project}"));
    }
    let id: String = (0..16)
        .map(|_| {
            let i = rand::random_range(0..62u8);
            char::from(match i {
                0..=9 => b'0' + i,
                10..=35 => b'a' + i - 10,
                _ => b'A' + i - 36,
            })
        })
        .collect();
    let name = format!("{parent}/{id}");
    {
        let mut inner = sandbox.lock();
        if inner.created.len() < sandbox.record_limit {
            inner.created.insert(name.clone());
        }
    }
    Json(json!({"name": name, "riskAnalysis": {"score": 0.9, "reasons": []}})).into_response()
}
