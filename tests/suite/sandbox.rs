//! The sandbox accepts what Google's own clients send and rejects malformed variants.

use std::time::Duration;

use recaptcha_annotator::sandbox::{Sandbox, Script};

struct Captured {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Parses `official-client-requests.txt` (requests seen by a loopback server).
fn captured() -> Vec<Captured> {
    let text = include_str!("../fixtures/official-client-requests.txt");
    let mut out = Vec::new();
    for block in text.split("=== ").filter(|b| !b.trim().is_empty()) {
        let (head, body) = block
            .split_once("\n\n")
            .expect("blank line between headers and body");
        let mut lines = head.lines();
        let request_line = lines.next().unwrap();
        let path = request_line.split(' ').nth(1).unwrap().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "host" | "content-length" | "connection" | "accept-encoding"
                )
            })
            .collect();
        out.push(Captured {
            path,
            headers,
            body: body.trim().to_owned(),
        });
    }
    out
}

async fn start(api_key: Option<&str>) -> (Sandbox, String) {
    let sandbox = Sandbox::new(api_key.map(str::to_owned), 1000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(recaptcha_annotator::sandbox::serve(
        listener,
        sandbox.clone(),
    ));
    (sandbox, base)
}

async fn send(base: &str, c: &Captured, body: &str) -> (u16, serde_json::Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client
        .post(format!("{base}{}", c.path))
        .body(body.to_owned());
    for (k, v) in &c.headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn accepts_every_request_from_the_official_clients() {
    // Open sandbox: one captured request (the Rust client) carries no credentials.
    let (sandbox, base) = start(None).await;
    let requests = captured();
    assert_eq!(requests.len(), 4);
    for c in &requests {
        let (status, body) = send(&base, c, &c.body).await;
        assert_eq!(status, 200, "{} -> {body}", c.path);
        assert_eq!(body, serde_json::json!({}));
    }
    let recorded = sandbox.recorded();
    assert_eq!(recorded.len(), 4);
    assert!(
        recorded
            .iter()
            .all(|r| r.name == "projects/123456789/assessments/0123456789abcdef")
    );
    let auths: Vec<_> = recorded.iter().map(|r| r.auth.as_str()).collect();
    assert_eq!(auths, ["api_key_query", "bearer", "none", "api_key_header"]);
    // With a key configured, every authenticated one is still accepted.
    let (keyed, base) = start(Some("TEST_API_KEY")).await;
    for c in requests.iter().filter(|c| {
        !c.headers.is_empty() && c.path.contains("key=")
            || c.headers
                .iter()
                .any(|(k, _)| k == "authorization" || k == "x-goog-api-key")
    }) {
        assert_eq!(send(&base, c, &c.body).await.0, 200, "{}", c.path);
    }
    assert_eq!(keyed.recorded().len(), 3);
}

#[tokio::test]
async fn rejects_malformed_variants_in_googles_error_shape() {
    let (sandbox, base) = start(Some("TEST_API_KEY")).await;
    let requests = captured();
    let names = &requests[0];
    let numbers = &requests[3];
    let variants = [
        (
            names,
            names.body.replace("\"FRAUDULENT\"", "\"FRAUDULENTISH\""),
        ),
        (
            names,
            names.body.replace("CHARGEBACK_FRAUD", "CHARGEBACK_FRAUDS"),
        ),
        (names, names.body.replace("accountId", "accountIdentifier")),
        (
            names,
            names.body.replace(
                "\"eventType\": \"CHARGEBACK\"",
                "\"eventType\": \"CHARGEBACKS\"",
            ),
        ),
        (
            names,
            names.body.replace("\"+15555550100\"", "\"5555550100\""),
        ),
        (
            numbers,
            numbers.body.replace("\"annotation\":2", "\"annotation\":9"),
        ),
        (numbers, numbers.body.replace("[8,2]", "[8,99]")),
        (
            numbers,
            numbers
                .body
                .replace("\"eventType\":12", "\"eventType\":\"12x\""),
        ),
        (
            numbers,
            numbers.body.replace("2026-11-25T10:00:00Z", "yesterday"),
        ),
        (numbers, numbers.body.replace('}', "")),
    ];
    for (c, body) in &variants {
        assert_ne!(&c.body, body, "variant did not change the body");
        let (status, err) = send(&base, c, body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["error"]["code"], 400);
        assert_eq!(err["error"]["status"], "INVALID_ARGUMENT");
    }
    // Wrong key: 400 API_KEY_INVALID; no credentials at all: 401.
    let (sandbox2, base2) = start(Some("ANOTHER_KEY")).await;
    let (status, err) = send(&base2, &requests[3], &requests[3].body).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let anonymous = Captured {
        path: requests[2].path.clone(),
        headers: vec![],
        body: String::new(),
    };
    let (status, err) = send(&base2, &anonymous, "{}").await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["status"], "UNAUTHENTICATED");
    assert!(sandbox.recorded().is_empty() && sandbox2.recorded().is_empty());
}

#[tokio::test]
async fn scripted_answers_come_in_order_then_the_default() {
    let (sandbox, base) = start(Some("TEST_API_KEY")).await;
    let c = &captured()[3];
    sandbox.set_script(
        serde_json::from_value::<Script>(serde_json::json!({
            "responses": [{"status": 429, "retry_after": 2}, {"status": 503, "times": 2}],
            "default": {"status": 200}
        }))
        .unwrap(),
    );
    let client = reqwest::Client::new();
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..4 {
            let r = client
                .post(format!("{base}{}", c.path))
                .header("x-goog-api-key", "TEST_API_KEY")
                .body(c.body.clone())
                .send()
                .await
                .unwrap();
            if r.status() == 429 {
                assert_eq!(r.headers()["retry-after"], "2");
            }
            s.push(r.status().as_u16());
        }
        s
    };
    assert_eq!(statuses, [429, 503, 503, 200]);
    assert_eq!(sandbox.attempts().len(), 4);
}

#[tokio::test]
async fn strict_mode_answers_as_google_does() {
    let sandbox = Sandbox::new(Some("k".into()), 1000).strict(vec!["123".into()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(recaptcha_annotator::sandbox::serve(
        listener,
        sandbox.clone(),
    ));
    let client = reqwest::Client::new();
    let post = |path: String, body: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let resp = client
                .post(format!("{base}{path}"))
                .header("x-goog-api-key", "k")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // create returns a new name, in the project's form; annotate accepts it.
    let (status, created) = post("/v1/projects/123/assessments".into(), "{}").await;
    assert_eq!(status, 200, "{created}");
    let name = created["name"].as_str().unwrap().to_owned();
    let id = name.strip_prefix("projects/123/assessments/").unwrap();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{name}"
    );
    let (status, body) = post(
        format!("/v1/{name}:annotate"),
        r#"{"annotation":"LEGITIMATE"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An assessment it never created: 404 NOT_FOUND in Google's error shape.
    let (status, body) = post(
        "/v1/projects/123/assessments/neverCreated0000:annotate".into(),
        "{}",
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    // A project the key does not own: 403 with ErrorInfo IAM_PERMISSION_DENIED.
    let (status, body) = post("/v1/projects/999/assessments/abc:annotate".into(), "{}").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "IAM_PERMISSION_DENIED"
    );
    // Timestamps as strictly as Google parses them.
    let (status, body) = post(
        format!("/v1/{name}:annotate"),
        r#"{"transactionEvent":{"eventTime":"2026-11-25t12:00:00z"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Scripted errors carry Google's details: ErrorInfo and RetryInfo.
    sandbox.set_script(Script {
        responses: vec![recaptcha_annotator::sandbox::Scripted {
            status: 429,
            times: 1,
            retry_after: Some(3),
            delay_ms: 0,
        }],
        ..Script::default()
    });
    let (status, body) = post(format!("/v1/{name}:annotate"), "{}").await;
    assert_eq!(status, 429);
    let details = body["error"]["details"].as_array().unwrap();
    assert!(
        details.iter().any(|d| d["reason"] == "RATE_LIMIT_EXCEEDED"),
        "{body}"
    );
    assert!(details.iter().any(|d| d["retryDelay"] == "3s"), "{body}");
}
