//! Google credentials end to end, on loopback only: a service account's key file (the
//! sandbox verifies the self-signed JWT against the account's public key), a user's refresh
//! token against the sandbox's token endpoint, and the metadata server (`GCE_METADATA_HOST`),
//! each counted so caching and refresh show; plus `x-goog-user-project`,
//! `x-goog-api-client` and what `check` reports.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use base64::Engine as _;
use serde_json::{Value, json};

async fn produce_outcomes(env: &TestEnv, tag: &str, n: usize) {
    env.produce_many(
        &unique_events(tag, n)
            .into_iter()
            .map(|(t, k, v)| (t, k, Some(v)))
            .collect::<Vec<_>>(),
    )
    .await;
}

fn token_counts(env: &TestEnv) -> Value {
    env.sandbox.identity().counts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_key_signs_tokens_the_sandbox_verifies_and_a_wrong_key_halts() {
    let env = TestEnv::new("cred-sa").await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key(dir.path(), "annotator");
    env.sandbox.trust_service_account(&public).unwrap();
    let key_file = service_account_file(dir.path(), "annotator", &private);
    let home = dir.path().to_str().unwrap();

    let config = config_without_key(
        &env,
        &format!(
            "[recaptcha]\ncredentials_file = \"{}\"\nquota_project = \"billing-project\"\n",
            key_file.display()
        ),
    );
    let service = spawn_logged_with(config.path(), "info", &clean_env(home, &[]));
    produce_outcomes(&env, "sa", 20).await;
    env.wait_accepted(20, Duration::from_secs(60)).await;
    let recorded = env.sandbox.recorded();
    assert!(recorded.iter().all(|r| r.auth == "bearer"), "{recorded:?}");
    assert!(
        recorded
            .iter()
            .all(|r| r.user_project.as_deref() == Some("billing-project")),
        "x-goog-user-project from recaptcha.quota_project: {:?}",
        recorded[0]
    );
    let client = recorded[0].api_client.clone().unwrap_or_default();
    assert!(
        client.starts_with("gl-rust/") && client.contains(" recaptcha-annotator/"),
        "x-goog-api-client as Google's libraries send it: {client:?}"
    );
    assert_eq!(token_counts(&env)["refused"], 0);
    let log = service.stop("TERM");
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains(&private[40..80]),
        "{log}"
    );

    // A key the sandbox does not trust: every call is refused with Google's 401, and the
    // service halts all calls (it does not dead-letter events for a credentials problem).
    let (other_private, _) = rsa_key(dir.path(), "stranger");
    let stranger = service_account_file(dir.path(), "stranger", &other_private);
    let config = config_without_key(
        &env,
        &format!(
            "[recaptcha]\ncredentials_file = \"{}\"\n",
            stranger.display()
        ),
    );
    let service = spawn_logged_with(config.path(), "info", &clean_env(home, &[]));
    produce_outcomes(&env, "stranger", 5).await;
    assert!(
        service
            .wait_for("UNAUTHENTICATED", Duration::from_secs(60))
            .await,
        "the 401 is logged"
    );
    let refused = token_counts(&env)["refused"].as_u64().unwrap();
    assert!(refused >= 1, "{refused}");
    assert_eq!(
        env.sandbox.accepted_count(),
        20,
        "nothing more was accepted"
    );
    service.stop("TERM");
    assert!(
        env.dead_letters(0, Duration::from_secs(2)).is_empty(),
        "a credentials problem is not the events' fault"
    );
}

/// Signs `claims` as a JWT (RS256) with openssl, as a service account's key would.
fn sign_jwt(key: &Path, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let input = key.with_extension("input");
    std::fs::write(&input, &signed).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    format!("{signed}.{}", b64.encode(out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_refuses_expired_and_unscoped_jwts_with_googles_401() {
    let env = TestEnv::new("cred-jwt").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = rsa_key(dir.path(), "signer");
    env.sandbox.trust_service_account(&public).unwrap();
    let key = dir.path().join("signer.pem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let scope = "https://www.googleapis.com/auth/cloud-platform";
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/projects/{PROJECT}/assessments/abc:annotate",
        env.endpoint
    );
    let call = |token: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let live = sign_jwt(
        &key,
        &json!({"scope": scope, "iat": now - 10, "exp": now + 3590}),
    );
    assert_eq!(call(live).await.0, 200);
    let expired = sign_jwt(
        &key,
        &json!({"scope": scope, "iat": now - 4000, "exp": now - 400}),
    );
    let (status, body) = call(expired).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "ACCESS_TOKEN_EXPIRED"
    );
    let unscoped = sign_jwt(
        &key,
        &json!({"scope": "https://www.googleapis.com/auth/devstorage.read_only", "iat": now, "exp": now + 600}),
    );
    assert_eq!(call(unscoped).await.0, 401);
    // Signed by the trusted key, but altered afterwards.
    let live = sign_jwt(&key, &json!({"scope": scope, "iat": now, "exp": now + 600}));
    let mut parts: Vec<&str> = live.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"scope": scope, "iat": now, "exp": now + 600, "sub": "admin"}).to_string());
    parts[1] = &forged;
    assert_eq!(call(parts.join(".")).await.0, 401);
}

/// Runs the service for `seconds` with tokens that the library refreshes every 3 s (it
/// refreshes 4 minutes before expiry: a 243 s token is due after 3 s), producing events all
/// along, and returns (calls accepted, token requests, refused).
async fn run_with_refreshing_tokens(
    env: &TestEnv,
    config: &Path,
    vars: &[(&str, Option<&str>)],
    seconds: u64,
    counter: &str,
) -> (u64, u64, u64) {
    env.sandbox.identity().verify();
    env.sandbox.identity().set_lifetime(243);
    let service = spawn_logged_with(config, "info", vars);
    for round in 0..seconds * 2 {
        produce_outcomes(env, &format!("r{round}x"), 10).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = std::time::Instant::now();
    while env.sandbox.accepted_count() < seconds * 20 && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = service.stop("TERM");
    assert!(
        env.sandbox.accepted_count() >= seconds * 20,
        "only {} accepted; the service said:\n{log}",
        env.sandbox.accepted_count()
    );
    let counts = token_counts(env);
    assert!(!log.contains("ya29."), "a token reached the log: {log}");
    (
        env.sandbox.accepted_count(),
        counts[counter].as_u64().unwrap(),
        counts["refused"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_refresh_token_is_exchanged_once_then_refreshed_before_expiry() {
    let env = TestEnv::new("cred-user").await;
    let dir = tempfile::tempdir().unwrap();
    let adc = dir.path().join("adc.json");
    std::fs::write(
        &adc,
        json!({
            "type": "authorized_user",
            "client_id": "annotator.apps.googleusercontent.com",
            "client_secret": "client-SECRET",
            "refresh_token": "1//refresh-SECRET",
            "token_uri": format!("{}/token", env.endpoint),
        })
        .to_string(),
    )
    .unwrap();
    let config = config_without_key(&env, "[recaptcha]\nquota_project = \"billing-project\"\n");
    let home = dir.path().to_str().unwrap();
    let adc = adc.to_str().unwrap();
    let vars = clean_env(home, &[("GOOGLE_APPLICATION_CREDENTIALS", Some(adc))]);
    let (accepted, requests, refused) =
        run_with_refreshing_tokens(&env, config.path(), &vars, 10, "token_requests").await;
    eprintln!("user credentials: {accepted} calls, {requests} token requests, {refused} refused");
    assert_eq!(refused, 0, "no call carried an expired or unknown token");
    assert!(
        (3..=7).contains(&requests),
        "one exchange, then a refresh about every 3 s over 10 s: {requests}"
    );
    assert!(accepted >= 200, "{accepted}");
    let recorded = env.sandbox.recorded();
    assert!(
        recorded
            .iter()
            .all(|r| r.user_project.as_deref() == Some("billing-project"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_server_token_is_cached_and_refreshed() {
    let env = TestEnv::new("cred-mds").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_without_key(&env, "");
    let host = env.endpoint.trim_start_matches("http://").to_owned();
    let home = dir.path().to_str().unwrap();
    let vars = clean_env(home, &[("GCE_METADATA_HOST", Some(&host))]);
    let (accepted, requests, refused) =
        run_with_refreshing_tokens(&env, config.path(), &vars, 10, "metadata_requests").await;
    eprintln!("metadata server: {accepted} calls, {requests} token requests, {refused} refused");
    assert_eq!(refused, 0);
    assert!((3..=7).contains(&requests), "{requests}");
    assert!(accepted >= 200, "{accepted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_credential_source_and_never_prints_the_token_or_key() {
    let env = TestEnv::new("cred-check").await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let (private, public) = rsa_key(dir.path(), "checked");
    env.sandbox.trust_service_account(&public).unwrap();
    let key_file = service_account_file(dir.path(), "checked", &private);
    let config = config_without_key(
        &env,
        &format!(
            "[recaptcha]\ncredentials_file = \"{}\"\n",
            key_file.display()
        ),
    );
    let (ok, out) = check_offline(config.path(), &clean_env(home, &[]));
    assert!(ok, "{out}");
    assert!(
        out.contains("service account from recaptcha.credentials_file")
            && out.contains("checked@annotator-test.iam.gserviceaccount.com")
            && out.contains("a token was obtained (not shown)"),
        "{out}"
    );
    assert!(
        !out.contains("PRIVATE KEY") && !out.contains("eyJ"),
        "{out}"
    );

    // The metadata server, and one that gives no token.
    env.sandbox.identity().verify();
    let config = config_without_key(&env, "");
    let host = env.endpoint.trim_start_matches("http://").to_owned();
    let (ok, out) = check_offline(
        config.path(),
        &clean_env(home, &[("GCE_METADATA_HOST", Some(&host))]),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("the metadata server at {host}")),
        "{out}"
    );
    assert!(!out.contains("ya29."), "{out}");
    let dead = format!("127.0.0.1:{}", free_port());
    let (ok, out) = check_offline(
        config.path(),
        &clean_env(home, &[("GCE_METADATA_HOST", Some(&dead))]),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL auth") && out.contains(&format!("the metadata server at {dead}")),
        "{out}"
    );
}

/// The admin address a config file names.
fn admin_of(config: &Path) -> String {
    let table: toml::Table = std::fs::read_to_string(config).unwrap().parse().unwrap();
    table["admin"]["listen"].as_str().unwrap().to_owned()
}

/// A metadata server that refuses one token request (403 while a Workload Identity binding
/// propagates) is asked again: google-cloud-auth's refresh task ends on such an error, so the
/// service builds its credentials again and resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_server_that_refuses_one_token_request_is_asked_again() {
    let env = TestEnv::new("cred-mds-refuse").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_without_key(&env, "[delivery]\nhalt_retry = \"1s\"\n");
    let host = env.endpoint.trim_start_matches("http://").to_owned();
    let home = dir.path().to_str().unwrap();
    let vars = clean_env(home, &[("GCE_METADATA_HOST", Some(&host))]);
    env.sandbox.identity().refuse_tokens(1, 403);
    let service = spawn_logged_with(config.path(), "info", &vars);
    produce_outcomes(&env, "mdsr", 5).await;
    let started = std::time::Instant::now();
    while env.sandbox.accepted_count() < 5 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = service.stop("TERM");
    let requests = token_counts(&env)["metadata_requests"].as_u64().unwrap();
    assert_eq!(
        env.sandbox.accepted_count(),
        5,
        "{requests} token requests; the service said:\n{log}"
    );
    assert!(requests >= 2, "asked only {requests} times");
    assert!(log.contains("built again"), "{log}");
}

/// A token source that accepts the connection and never answers: the service halts within
/// `request_timeout` with the reason on `/readyz`, no call goes out or is counted in flight,
/// and it resumes once the source answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_source_that_never_answers_halts_with_its_reason_then_resumes() {
    let env = TestEnv::new("cred-mds-hang").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_without_key(
        &env,
        "[recaptcha]\nrequest_timeout = \"1s\"\n[delivery]\nhalt_retry = \"1s\"\n",
    );
    let admin = admin_of(config.path());
    let host = env.endpoint.trim_start_matches("http://").to_owned();
    let home = dir.path().to_str().unwrap();
    let vars = clean_env(home, &[("GCE_METADATA_HOST", Some(&host))]);
    env.sandbox.identity().hang_tokens(true);
    let service = spawn_logged_with(config.path(), "info", &vars);
    produce_outcomes(&env, "mdsh", 5).await;
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = admin_get(&admin, "/readyz").await;
        if (status == 503 && body.contains("no token within"))
            || started.elapsed() > Duration::from_secs(30)
        {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("recaptcha.request_timeout"), "{body}");
    let (_, metrics) = admin_get(&admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "annotator_in_flight", &[]),
        Some(0.0),
        "no call holds a slot"
    );
    assert!(
        env.sandbox.attempts().is_empty(),
        "a call went out without a token"
    );
    env.sandbox.identity().hang_tokens(false);
    let started = std::time::Instant::now();
    while env.sandbox.accepted_count() < 5 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = admin_get(&admin, "/readyz").await;
    let log = service.stop("TERM");
    assert_eq!(env.sandbox.accepted_count(), 5, "{log}");
    assert_eq!(status, 200, "{log}");
}
