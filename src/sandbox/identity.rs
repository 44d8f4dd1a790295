//! Google's identity side, on loopback: the OAuth token endpoint that exchanges a user's
//! refresh token (`POST /token`), the metadata server's token path (GKE workload identity,
//! GCE), and the check of bearer tokens on annotate calls. A service account's key signs its
//! own token (a JWT, RS256); given the account's public key
//! ([`Sandbox::trust_service_account`](super::Sandbox::trust_service_account)) the sandbox
//! verifies it as Google does: signature, scope or audience, and expiry.
//!
//! Tokens are checked only once [`Identity::verify`] is on (the `sandbox` command turns it
//! on with `--trust-service-account` or `--verify-tokens`); before, any bearer is accepted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Sandbox, now_ms};

/// The scope a token must carry to annotate.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The audience a self-signed JWT may name instead of a scope.
const AUDIENCE: &str = "https://recaptchaenterprise.googleapis.com/";

/// Issued tokens, trusted keys and counters.
#[derive(Default)]
pub struct Identity {
    verify: AtomicBool,
    /// DER public keys (SubjectPublicKeyInfo) of trusted service accounts.
    trusted: Mutex<Vec<Vec<u8>>>,
    /// Lifetime of the tokens this sandbox issues, in seconds (default 3600).
    lifetime: AtomicU64,
    /// Token -> when it expires (ms since the epoch).
    issued: Mutex<HashMap<String, u64>>,
    token_requests: AtomicU64,
    metadata_requests: AtomicU64,
    refused: AtomicU64,
    serial: AtomicU64,
    /// Token requests still to refuse, and with which status (see [`Identity::refuse_tokens`]).
    refuse_next: AtomicU64,
    refuse_status: AtomicU64,
    /// Token requests are held unanswered while set.
    hang: AtomicBool,
}

impl Identity {
    /// Refuses the next `n` token requests (both paths) with `status`: a metadata server
    /// while a Workload Identity binding propagates (403, 404), a token endpoint's
    /// `invalid_grant` (400).
    pub fn refuse_tokens(&self, n: u64, status: u16) {
        self.refuse_status
            .store(u64::from(status), Ordering::Relaxed);
        self.refuse_next.store(n, Ordering::Relaxed);
    }

    /// Holds token requests unanswered (the connection accepted, nothing said) while `on`.
    pub fn hang_tokens(&self, on: bool) {
        self.hang.store(on, Ordering::Relaxed);
    }

    /// A scripted fault for this token request, if one is due: hangs while told to, then
    /// the refusal.
    async fn fault(&self) -> Option<Response> {
        while self.hang.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let refuse = self
            .refuse_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !refuse {
            return None;
        }
        let status = u16::try_from(self.refuse_status.load(Ordering::Relaxed))
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::FORBIDDEN);
        Some(
            (
                status,
                Json(json!({"error": "invalid_grant", "error_description": "scripted refusal"})),
            )
                .into_response(),
        )
    }
}

/// Why a bearer token is refused: Google's `ErrorInfo` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Expired,
    Unknown,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired => "ACCESS_TOKEN_EXPIRED",
            Self::Unknown => "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        }
    }
}

impl Identity {
    /// Checks bearer tokens from now on.
    pub fn verify(&self) {
        self.verify.store(true, Ordering::Relaxed);
    }

    /// Trusts the service account whose public key is `pem` (`-----BEGIN PUBLIC KEY-----`).
    pub fn trust(&self, pem: &str) -> Result<(), String> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        if !pem.contains("BEGIN PUBLIC KEY") {
            return Err("not a PEM public key (-----BEGIN PUBLIC KEY-----); make one with `openssl pkey -in key.pem -pubout`".into());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|e| format!("the PEM body is not base64: {e}"))?;
        lock(&self.trusted).push(der);
        self.verify();
        Ok(())
    }

    /// Sets the lifetime of issued tokens.
    pub fn set_lifetime(&self, seconds: u64) {
        self.lifetime.store(seconds, Ordering::Relaxed);
    }

    fn lifetime(&self) -> u64 {
        match self.lifetime.load(Ordering::Relaxed) {
            0 => 3600,
            s => s,
        }
    }

    /// `Ok` when `token` may annotate: verification is off, or it is a live token this
    /// sandbox issued, or a trusted service account's live self-signed JWT.
    pub fn check(&self, token: &str) -> Result<(), Refusal> {
        if !self.verify.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result = match lock(&self.issued).get(token) {
            Some(&expires) if expires > now_ms() => Ok(()),
            Some(_) => Err(Refusal::Expired),
            None => self.check_jwt(token),
        };
        if result.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn check_jwt(&self, token: &str) -> Result<(), Refusal> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Unknown);
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: Value = b64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(Refusal::Unknown)?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(Refusal::Unknown);
        }
        let signature = b64.decode(signature).map_err(|_| Refusal::Unknown)?;
        let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        let trusted = lock(&self.trusted).clone();
        if !trusted.iter().any(|der| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        }) {
            return Err(Refusal::Unknown);
        }
        let claims: Value = b64
            .decode(claims)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(Refusal::Unknown)?;
        let scoped = claims
            .get("scope")
            .and_then(Value::as_str)
            .is_some_and(|s| s.split(' ').any(|s| s == CLOUD_PLATFORM));
        let audience = claims.get("aud").and_then(Value::as_str) == Some(AUDIENCE);
        if !scoped && !audience {
            return Err(Refusal::Unknown);
        }
        let now = now_ms() / 1000;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        // Google allows an hour at most, and a little clock skew.
        if exp <= now || iat > now + 60 || exp.saturating_sub(iat) > 3600 + 60 {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    fn issue(&self) -> Value {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.sandbox-{serial}-{}", now_ms());
        let lifetime = self.lifetime();
        lock(&self.issued).insert(token.clone(), now_ms() + lifetime * 1000);
        json!({
            "access_token": token,
            "expires_in": lifetime,
            "token_type": "Bearer",
            "scope": CLOUD_PLATFORM,
        })
    }

    /// `{"token_requests", "metadata_requests", "refused"}`.
    pub fn counts(&self) -> Value {
        json!({
            "token_requests": self.token_requests.load(Ordering::Relaxed),
            "metadata_requests": self.metadata_requests.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The form of `POST /token` (RFC 6749, refresh token grant).
#[derive(Deserialize)]
pub(super) struct TokenForm {
    grant_type: String,
    #[serde(default)]
    refresh_token: String,
}

/// `POST /token`: a user's refresh token for an access token, as `oauth2.googleapis.com`
/// answers it; the request is a form or JSON, as Google's endpoint accepts both.
pub(super) async fn token(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = sandbox.identity();
    identity.token_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(refused) = identity.fault().await {
        return refused;
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let form: Option<TokenForm> = if json {
        serde_json::from_slice(&body).ok()
    } else {
        serde_urlencoded::from_bytes(&body).ok()
    };
    let Some(form) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "Bad Request"})),
        )
            .into_response();
    };
    if form.grant_type != "refresh_token" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})),
        )
            .into_response();
    }
    if form.refresh_token.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Bad Request"})),
        )
            .into_response();
    }
    Json(identity.issue()).into_response()
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token`, as the metadata
/// server answers it: only with `Metadata-Flavor: Google`.
pub(super) async fn metadata_token(State(sandbox): State<Sandbox>, headers: HeaderMap) -> Response {
    let identity = sandbox.identity();
    identity.metadata_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(refused) = identity.fault().await {
        return refused;
    }
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.\n",
        )
            .into_response();
    }
    let mut response = Json(identity.issue()).into_response();
    response.headers_mut().insert(
        "metadata-flavor",
        axum::http::HeaderValue::from_static("Google"),
    );
    response
}

/// `GET /sandbox/tokens`: how many tokens were asked for, and how many were refused.
pub(super) async fn counts(State(sandbox): State<Sandbox>) -> Json<Value> {
    Json(sandbox.identity().counts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverified_sandbox_takes_any_bearer_and_a_verifying_one_only_its_own() {
        let identity = Identity::default();
        assert_eq!(identity.check("anything"), Ok(()));
        identity.verify();
        assert_eq!(identity.check("anything"), Err(Refusal::Unknown));
        let issued = identity.issue();
        let token = issued["access_token"].as_str().unwrap();
        assert_eq!(identity.check(token), Ok(()));
        lock(&identity.issued).insert("old".into(), now_ms() - 1);
        assert_eq!(identity.check("old"), Err(Refusal::Expired));
    }

    #[test]
    fn a_jwt_from_an_untrusted_key_is_refused() {
        let identity = Identity::default();
        identity.verify();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = b64.encode(br#"{"scope":"https://www.googleapis.com/auth/cloud-platform","exp":99999999999,"iat":1}"#);
        let token = format!("{header}.{claims}.{}", b64.encode(b"not a signature"));
        assert_eq!(identity.check(&token), Err(Refusal::Unknown));
        // An unsigned token (`alg: none`) is no better.
        let none = b64.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            identity.check(&format!("{none}.{claims}.")),
            Err(Refusal::Unknown)
        );
    }
}
