//! Credentials: an API key (`x-goog-api-key`), or Google credentials through Google's own
//! `google-cloud-auth`, which caches tokens and refreshes them before they expire: a key file
//! named by `recaptcha.credentials_file`, else Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, or the metadata server of GKE and GCE).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_auth::credentials::{
    Builder, CacheableResource, Credentials, service_account, user_account,
};
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use thiserror::Error;

use crate::config::RecaptchaConfig;

/// The only scope the annotate call needs.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// `x-goog-api-client`, in the form Google's client libraries send (`gl-rust/<rustc>`), with
/// this service's own name and version.
pub const API_CLIENT: &str = concat!(
    "gl-rust/",
    env!("ANNOTATOR_RUSTC_VERSION"),
    " recaptcha-annotator/",
    env!("CARGO_PKG_VERSION")
);

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
    Google(Arc<GoogleAuth>),
}

/// Google credentials that are built again after a token error no retry can fix.
///
/// google-cloud-auth refreshes tokens in a task of its own, which ends on a non-transient
/// error (a metadata server's 403 or 404 while a Workload Identity binding propagates, an
/// `invalid_grant`): those credentials then repeat that error for ever, without asking
/// again. So after such an error, or a token source that does not answer within the call's
/// timeout, the credentials are built again (at most once per backoff, 1 s doubling to
/// 1 minute), and the next call asks afresh: the service resumes by itself once IAM is fixed.
pub struct GoogleAuth {
    build: Box<dyn Fn() -> Result<Credentials, AuthError> + Send + Sync>,
    current: Mutex<Current>,
}

struct Current {
    credentials: Credentials,
    /// No rebuild before this.
    rebuild_at: Instant,
    /// The next wait between rebuilds.
    backoff: Duration,
}

/// The first wait between two rebuilds of failing credentials; it doubles up to the most.
const REBUILD_FIRST: Duration = Duration::from_secs(1);
const REBUILD_MOST: Duration = Duration::from_secs(60);

impl GoogleAuth {
    /// Credentials from `build`, which is called again for every rebuild.
    pub fn new(
        build: impl Fn() -> Result<Credentials, AuthError> + Send + Sync + 'static,
    ) -> Result<Self, AuthError> {
        let credentials = build()?;
        Ok(Self {
            build: Box::new(build),
            current: Mutex::new(Current {
                credentials,
                rebuild_at: Instant::now(),
                backoff: REBUILD_FIRST,
            }),
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The headers of one call, or why there are none.
    async fn headers(&self, timeout: Duration) -> Result<HeaderMap, AuthError> {
        let credentials = self.current().credentials.clone();
        // Boxed: the token source's future is large and every call's future would carry
        // its size, API key or not.
        let fetched = tokio::time::timeout(
            timeout,
            Box::pin(credentials.headers(http::Extensions::new())),
        )
        .await;
        match fetched {
            Ok(Ok(CacheableResource::New { data, .. })) => {
                self.current().backoff = REBUILD_FIRST;
                Ok(data)
            }
            Ok(Ok(CacheableResource::NotModified)) => {
                Err(AuthError::Google("credentials returned no headers".into()))
            }
            Ok(Err(e)) if e.is_transient() => Err(AuthError::Google(token_error(&e))),
            Ok(Err(e)) => {
                self.rebuild();
                Err(AuthError::Google(token_error(&e)))
            }
            Err(_) => {
                self.rebuild();
                Err(AuthError::Google(format!(
                    "Google credentials: no token within recaptcha.request_timeout ({}): the token source (the metadata server, or the key file's token_uri) does not answer",
                    humantime::format_duration(timeout)
                )))
            }
        }
    }

    /// Builds the credentials again, unless that was done within the backoff.
    fn rebuild(&self) {
        let now = Instant::now();
        let mut current = self.current();
        if now < current.rebuild_at {
            return;
        }
        current.rebuild_at = now + current.backoff;
        current.backoff = (current.backoff * 2).min(REBUILD_MOST);
        match (self.build)() {
            Ok(credentials) => {
                current.credentials = credentials;
                tracing::info!(
                    "Google credentials built again after a token error; the next call asks for a new token"
                );
            }
            Err(e) => tracing::warn!(error = %e, "Google credentials could not be built again"),
        }
    }
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

/// Where Google credentials come from, as `check` reports it: never a secret, only the kind
/// of credential, its file and the identity it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A key file: `recaptcha.credentials_file`, `GOOGLE_APPLICATION_CREDENTIALS` or gcloud's
    /// application-default file.
    File {
        origin: &'static str,
        path: PathBuf,
        kind: String,
        identity: Option<String>,
    },
    /// The metadata server (GKE workload identity, GCE, Cloud Run).
    MetadataServer { host: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File {
                origin,
                path,
                kind,
                identity,
            } => {
                write!(f, "{kind} from {origin} ({})", path.display())?;
                match identity {
                    Some(who) => write!(f, " for {who}"),
                    None => Ok(()),
                }
            }
            Self::MetadataServer { host } => write!(f, "the metadata server at {host}"),
        }
    }
}

impl Source {
    /// Finds the source `Auth::google` uses, in the order Application Default Credentials
    /// search, with `recaptcha.credentials_file` first.
    pub fn find(config: &RecaptchaConfig) -> Result<Self, AuthError> {
        if let Some(path) = &config.credentials_file {
            return Self::file("recaptcha.credentials_file", path);
        }
        if let Some(path) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return Self::file("GOOGLE_APPLICATION_CREDENTIALS", Path::new(&path));
        }
        let gcloud = std::env::var_os("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("gcloud"))
            })
            .map(|dir| dir.join("application_default_credentials.json"));
        if let Some(path) = gcloud.filter(|p| p.is_file()) {
            return Self::file("gcloud's application-default login", &path);
        }
        let host = std::env::var("GCE_METADATA_HOST")
            .unwrap_or_else(|_| "metadata.google.internal".into());
        Ok(Self::MetadataServer { host })
    }

    fn file(origin: &'static str, path: &Path) -> Result<Self, AuthError> {
        let json = read_key_file(path)?;
        let kind = json
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("no type")
            .to_owned();
        // Identities only: an email, or the OAuth client of a user's refresh token.
        let identity = match kind.as_str() {
            "service_account" => json.get("client_email"),
            "authorized_user" => json.get("account").filter(|a| a != &""),
            _ => None,
        }
        .and_then(Value::as_str)
        .map(str::to_owned);
        Ok(Self::File {
            origin,
            path: path.to_owned(),
            kind: kind.replace('_', " "),
            identity,
        })
    }
}

/// Reads a credentials file as JSON; an error names the file and never quotes it.
fn read_key_file(path: &Path) -> Result<Value, AuthError> {
    let text = std::fs::read(path)
        .map_err(|e| AuthError::Google(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| {
        AuthError::Google(format!(
            "{} is not a credentials file (JSON expected; {} at line {}, column {})",
            path.display(),
            match e.classify() {
                serde_json::error::Category::Eof => "it ends early",
                _ => "malformed",
            },
            e.line(),
            e.column()
        ))
    })
}

impl Auth {
    pub fn api_key(key: &SecretString) -> Result<Self, AuthError> {
        let mut value =
            HeaderValue::from_str(key.expose_secret()).map_err(|_| AuthError::BadKey)?;
        value.set_sensitive(true);
        Ok(Self::ApiKey(value))
    }

    /// Google credentials with the cloud-platform scope: the key file of
    /// `recaptcha.credentials_file` (a service account's key or a user's refresh token), else
    /// Application Default Credentials. `recaptcha.quota_project` is sent as
    /// `x-goog-user-project`, which user credentials need for quota.
    pub fn google(config: &RecaptchaConfig) -> Result<Self, AuthError> {
        let file = config.credentials_file.clone();
        let quota_project = config.quota_project.clone();
        GoogleAuth::new(move || Self::build_google(file.as_deref(), quota_project.as_deref()))
            .map(|auth| Self::Google(Arc::new(auth)))
    }

    fn build_google(
        credentials_file: Option<&Path>,
        quota_project: Option<&str>,
    ) -> Result<Credentials, AuthError> {
        let built = match credentials_file {
            Some(path) => {
                let json = read_key_file(path)?;
                match json.get("type").and_then(Value::as_str) {
                    Some("service_account") => {
                        let mut b = service_account::Builder::new(json).with_access_specifier(
                            service_account::AccessSpecifier::from_scopes([CLOUD_PLATFORM]),
                        );
                        if let Some(p) = quota_project {
                            b = b.with_quota_project_id(p);
                        }
                        b.build()
                    }
                    Some("authorized_user") => {
                        let mut b = user_account::Builder::new(json).with_scopes([CLOUD_PLATFORM]);
                        if let Some(p) = quota_project {
                            b = b.with_quota_project_id(p);
                        }
                        b.build()
                    }
                    other => {
                        return Err(AuthError::Google(format!(
                            "{}: credentials of type {} are not supported in recaptcha.credentials_file (a service account key or a user's refresh token are); point GOOGLE_APPLICATION_CREDENTIALS at it instead",
                            path.display(),
                            other.unwrap_or("(none)")
                        )));
                    }
                }
            }
            None => {
                let mut b = Builder::default().with_scopes([CLOUD_PLATFORM]);
                if let Some(p) = quota_project {
                    b = b.with_quota_project_id(p);
                }
                b.build()
            }
        };
        built.map_err(|e| AuthError::Google(e.to_string()))
    }

    /// The headers to add to one request; a token source gets `timeout` to answer.
    pub async fn headers(&self, timeout: Duration) -> Result<HeaderMap, AuthError> {
        match self {
            Self::None => Ok(HeaderMap::new()),
            Self::ApiKey(value) => {
                let mut headers = HeaderMap::new();
                headers.insert("x-goog-api-key", value.clone());
                Ok(headers)
            }
            Self::Google(auth) => auth.headers(timeout).await,
        }
    }
}

/// What a failed token fetch means for the operator, in one sentence: whether retrying can
/// help, then the causes (Google's own message reads "... might succeed. but future
/// attempts may succeed").
fn token_error(e: &google_cloud_auth::errors::CredentialsError) -> String {
    let causes: Vec<String> = crate::failure::causes(e)
        .skip(1)
        .map(ToString::to_string)
        .collect();
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
