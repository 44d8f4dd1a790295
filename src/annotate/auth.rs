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
                    Err(e) => Err(AuthError::Google(e.to_string())),
                }
            }
        }
    }
}
