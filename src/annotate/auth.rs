//! Credentials: an API key (`x-goog-api-key`), or Google Application Default Credentials
//! through Google's own `google-cloud-auth` (service account key, workload identity,
//! metadata server), which caches and refreshes tokens.

use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("api key is not a valid header value")]
    BadKey,
    #[error("google credentials: {0}")]
    Google(String),
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// No credentials: dry runs only, which never call.
    None,
    ApiKey(HeaderValue),
    Google(google_cloud_auth::credentials::Credentials),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("Auth::None"),
            Self::ApiKey(_) => f.write_str("Auth::ApiKey([redacted])"),
            Self::Google(_) => f.write_str("Auth::Google"),
        }
    }
}

impl Auth {
    pub fn api_key(key: &SecretString) -> Result<Self, AuthError> {
        let mut value =
            HeaderValue::from_str(key.expose_secret()).map_err(|_| AuthError::BadKey)?;
        value.set_sensitive(true);
        Ok(Self::ApiKey(value))
    }

    /// Application Default Credentials with the cloud-platform scope.
    pub fn application_default() -> Result<Self, AuthError> {
        let credentials = google_cloud_auth::credentials::Builder::default()
            .with_scopes(["https://www.googleapis.com/auth/cloud-platform"])
            .build()
            .map_err(|e| AuthError::Google(e.to_string()))?;
        Ok(Self::Google(credentials))
    }

    /// The headers to add to one request.
    pub async fn headers(&self) -> Result<HeaderMap, AuthError> {
        match self {
            Self::None => Ok(HeaderMap::new()),
            Self::ApiKey(value) => {
                let mut headers = HeaderMap::new();
                headers.insert("x-goog-api-key", value.clone());
                Ok(headers)
            }
            // Boxed: the token source's future is large and every call's future would carry
            // its size, API key or not.
            Self::Google(credentials) => {
                match Box::pin(credentials.headers(http::Extensions::new())).await {
                    Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => {
                        Ok(data)
                    }
                    Ok(google_cloud_auth::credentials::CacheableResource::NotModified) => {
                        Err(AuthError::Google("credentials returned no headers".into()))
                    }
                    Err(e) => Err(AuthError::Google(token_error(&e))),
                }
            }
        }
    }
}

/// What a failed token fetch means for the operator, in one sentence: whether retrying can
/// help, then the causes (Google's own message reads "... might succeed. but future
/// attempts may succeed").
fn token_error(e: &google_cloud_auth::errors::CredentialsError) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let what = if e.is_transient() {
        "Google credentials: no token now (a passing failure; the next call tries again)"
    } else {
        "Google credentials cannot produce a token (fix them: the service account key, the metadata server, or GOOGLE_APPLICATION_CREDENTIALS)"
    };
    if causes.is_empty() {
        format!("{what}: {e}")
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}
