//! `/status` in a real browser: Debian's headless Chromium, kept off the network (every
//! host but loopback resolves to nothing; no background services), loads the page while
//! the service runs against the sandbox, lets its script refresh it from `/status.json`,
//! and the numbers it shows agree with `/metrics`. `UPDATE_SCREENSHOT=1` also writes
//! docs/status-page.png (README shows it).

use std::time::Duration;

use crate::common::*;

fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    std::process::Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium (Debian's package; scripts/deploy-tools.sh installs it)")
}

/// The text of the first element with `data-field="{field}"`.
fn field(dom: &str, field: &str) -> String {
    let marker = format!("data-field=\"{field}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {field} in:\n{dom}"))
        + marker.len();
    dom[start..start + dom[start..].find('<').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_browser_agrees_with_the_metrics() {
    let env = TestEnv::with_partitions("status-page", 1).await;
    let mut events = unique_events("page", 30);
    events.push((
        "fraud-signals".into(),
        Some("bad".into()),
        "not json".into(),
    ));
    env.produce_bulk(events).await;
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    // The partitions' lag is read every admin.lag_interval: wait for the first reading.
    let started = std::time::Instant::now();
    while !env.http_get("/status.json").await.1.contains("\"lag\"") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lag reading"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/status", env.admin_port);
    let out = tokio::task::block_in_place(|| chromium(&["--dump-dom", &url], profile.path()));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-refreshed="),
        "the page's script did not refresh it from /status.json: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, metrics) = env.http_get("/metrics").await;
    let annotated = metric(
        &metrics,
        "annotator_events_total",
        &[("result", "annotated")],
    )
    .unwrap_or_default();
    let dead: f64 = ["decode"]
        .iter()
        .map(|r| {
            metric(&metrics, "annotator_dead_letters_total", &[("reason", r)]).unwrap_or_default()
        })
        .sum();
    assert_eq!(
        field(&dom, "annotated_total"),
        format!("{annotated}"),
        "{dom}"
    );
    assert_eq!(annotated, 30.0);
    assert_eq!(field(&dom, "dead_letters"), format!("{dead}"));
    assert_eq!(field(&dom, "ready"), "ready");
    assert!(
        dom.contains("decode"),
        "the last dead letter's reason: {dom}"
    );
    assert!(!dom.contains("not json"), "a payload reached the page");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let png = format!("{}/docs/status-page.png", env!("CARGO_MANIFEST_DIR"));
        tokio::task::block_in_place(|| {
            chromium(
                &[
                    "--window-size=1000,1300",
                    &format!("--screenshot={png}"),
                    &url,
                ],
                profile.path(),
            )
        });
    }
    service.stop().await;
}
