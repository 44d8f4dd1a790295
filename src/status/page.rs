//! `/status`: the snapshot as one server-rendered page. A short script refreshes it from
//! `/status.json` every two seconds; without JavaScript it is the same page, as of its load.
//! No front-end framework, nothing fetched from elsewhere.

use std::fmt::Write as _;

use super::Status;

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let mut page = String::with_capacity(8 * 1024);
    page.push_str(HEAD);
    let _ = write!(
        page,
        "<main id=\"status\">{}</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        body(status)
    );
    page
}

/// The page's body, also what the script rebuilds from `/status.json` (the same markup, so
/// both paths show the same).
pub fn body(s: &Status) -> String {
    let mut b = String::with_capacity(4 * 1024);
    let _ = write!(
        b,
        "<h1>recaptcha-annotator {} <small>({})</small></h1>",
        esc(&s.version),
        esc(&s.revision)
    );
    if s.ready {
        b.push_str("<p class=\"ok\" data-field=\"ready\">ready</p>");
    } else {
        let _ = write!(
            b,
            "<p class=\"bad\" data-field=\"ready\">not ready: {}</p>",
            esc(&s.reasons.join("; "))
        );
    }
    for note in &s.notes {
        let _ = write!(b, "<p class=\"note\">{}</p>", esc(note));
    }
    b.push_str("<h2>Flow</h2><table>");
    let rows: [(&str, &str, String); 7] = [
        (
            "events finished",
            "events_total",
            s.events_total.to_string(),
        ),
        (
            "annotated",
            "annotated_total",
            s.annotated_total.to_string(),
        ),
        (
            "dead letters",
            "dead_letters",
            s.dead_letters_total.values().sum::<u64>().to_string(),
        ),
        (
            "calls in flight / limit",
            "in_flight",
            format!("{} / {}", s.in_flight, s.in_flight_limit),
        ),
        ("parked joins", "parked", s.parked.to_string()),
        ("events pending", "pending", s.pending.to_string()),
        (
            "budget",
            "budget",
            format!(
                "{}; {} granted{}",
                if s.budget.rate == 0 {
                    "none (delivery.rate_limit = 0)".to_owned()
                } else {
                    format!("{}/s, burst {}", s.budget.rate, s.budget.burst)
                },
                s.budget.granted_total,
                if s.budget.fallback {
                    "; Redis unreachable: spending this instance's share"
                } else {
                    ""
                }
            ),
        ),
    ];
    for (label, field, value) in rows {
        let _ = write!(
            b,
            "<tr><th>{label}</th><td data-field=\"{field}\">{}</td></tr>",
            esc(&value)
        );
    }
    b.push_str("</table>");
    if !s.dead_letters_total.is_empty() {
        b.push_str("<h2>Dead letters by reason</h2><table>");
        for (reason, n) in &s.dead_letters_total {
            let _ = write!(b, "<tr><th>{}</th><td>{n}</td></tr>", esc(reason));
        }
        b.push_str("</table>");
    }
    b.push_str("<h2>Halts</h2>");
    match &s.halted {
        Some(why) => {
            let _ = write!(b, "<p class=\"bad\">every call halted: {}</p>", esc(why));
        }
        None if s.halted_projects.is_empty() => b.push_str("<p>none</p>"),
        None => {}
    }
    if !s.halted_projects.is_empty() {
        b.push_str("<table><tr><th>project</th><th>since</th><th>why</th></tr>");
        for p in &s.halted_projects {
            let _ = write!(
                b,
                "<tr><td>{}</td><td data-since=\"{}\">{}</td><td>{}</td></tr>",
                esc(&p.project),
                p.since_ms,
                ago(s.at_ms, p.since_ms),
                esc(&p.reason)
            );
        }
        b.push_str("</table>");
    }
    b.push_str(
        "<h2>Partitions</h2><table><tr><th>topic</th><th>partition</th><th>lag</th><th>committed / end</th></tr>",
    );
    for p in &s.partitions {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>",
            esc(&p.topic),
            p.partition,
            p.lag,
            p.committed,
            p.end
        );
    }
    b.push_str("</table><h2>Last dead letters</h2>");
    if s.recent_dead_letters.is_empty() {
        b.push_str("<p>none</p>");
    } else {
        b.push_str("<table><tr><th>when</th><th>reason</th><th>event</th><th>detail</th></tr>");
        for d in &s.recent_dead_letters {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                ago(s.at_ms, d.at_ms),
                esc(&d.reason),
                esc(&d.source),
                esc(&d.detail)
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(
        b,
        "<h2>Effective config (secrets redacted)</h2><pre>{}</pre>",
        esc(&s.config)
    );
    b
}

/// "12 s ago", "5 min ago", ...
fn ago(now_ms: u64, then_ms: u64) -> String {
    format!("{} ago", super::ago(now_ms, then_ms))
}

/// Escapes text for HTML.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>recaptcha-annotator status</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; margin-bottom: 1rem; }
th, td { text-align: left; padding: 0.2rem 0.8rem 0.2rem 0; vertical-align: top; }
th { font-weight: 600; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #b42318; font-weight: 600; }
.note { color: #9a6700; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }
small { color: #666; font-weight: normal; }
</style>
</head>
<body>
"#;

/// Fetches `/status.json` every two seconds and rebuilds the page from it with the same
/// markup as the server's (`body` above, mirrored); on any error it keeps the last page.
const SCRIPT: &str = r#"
(function () {
  function esc(t) { return String(t).replace(/[&<>"']/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; }); }
  function ago(now, then) { var s = Math.floor(Math.max(0, now - then) / 1000);
    return s < 60 ? s + " s ago" : s < 3600 ? Math.floor(s / 60) + " min ago" : Math.floor(s / 3600) + " h ago"; }
  function render(s) {
    var b = "<h1>recaptcha-annotator " + esc(s.version) + " <small>(" + esc(s.revision) + ")</small></h1>";
    b += s.ready ? '<p class="ok" data-field="ready">ready</p>'
                 : '<p class="bad" data-field="ready">not ready: ' + esc(s.reasons.join("; ")) + "</p>";
    s.notes.forEach(function (n) { b += '<p class="note">' + esc(n) + "</p>"; });
    var dead = Object.keys(s.dead_letters_total).reduce(function (a, k) { return a + s.dead_letters_total[k]; }, 0);
    var budget = (s.budget.rate === 0 ? "none (delivery.rate_limit = 0)" : s.budget.rate + "/s, burst " + s.budget.burst) +
      "; " + s.budget.granted_total + " granted" +
      (s.budget.fallback ? "; Redis unreachable: spending this instance's share" : "");
    var rows = [["events finished", "events_total", s.events_total], ["annotated", "annotated_total", s.annotated_total],
      ["dead letters", "dead_letters", dead], ["calls in flight / limit", "in_flight", s.in_flight + " / " + s.in_flight_limit],
      ["parked joins", "parked", s.parked], ["events pending", "pending", s.pending], ["budget", "budget", budget]];
    b += "<h2>Flow</h2><table>";
    rows.forEach(function (r) { b += "<tr><th>" + r[0] + '</th><td data-field="' + r[1] + '">' + esc(r[2]) + "</td></tr>"; });
    b += "</table>";
    var reasons = Object.keys(s.dead_letters_total);
    if (reasons.length) {
      b += "<h2>Dead letters by reason</h2><table>";
      reasons.forEach(function (k) { b += "<tr><th>" + esc(k) + "</th><td>" + s.dead_letters_total[k] + "</td></tr>"; });
      b += "</table>";
    }
    b += "<h2>Halts</h2>";
    if (s.halted) { b += '<p class="bad">every call halted: ' + esc(s.halted) + "</p>"; }
    else if (!s.halted_projects.length) { b += "<p>none</p>"; }
    if (s.halted_projects.length) {
      b += "<table><tr><th>project</th><th>since</th><th>why</th></tr>";
      s.halted_projects.forEach(function (p) {
        b += "<tr><td>" + esc(p.project) + '</td><td data-since="' + p.since_ms + '">' + ago(s.at_ms, p.since_ms) + "</td><td>" + esc(p.reason) + "</td></tr>"; });
      b += "</table>";
    }
    b += "<h2>Partitions</h2><table><tr><th>topic</th><th>partition</th><th>lag</th><th>committed / end</th></tr>";
    s.partitions.forEach(function (p) {
      b += "<tr><td>" + esc(p.topic) + "</td><td>" + p.partition + "</td><td>" + p.lag + "</td><td>" + p.committed + " / " + p.end + "</td></tr>"; });
    b += "</table><h2>Last dead letters</h2>";
    if (!s.recent_dead_letters.length) { b += "<p>none</p>"; } else {
      b += "<table><tr><th>when</th><th>reason</th><th>event</th><th>detail</th></tr>";
      s.recent_dead_letters.forEach(function (d) {
        b += "<tr><td>" + ago(s.at_ms, d.at_ms) + "</td><td>" + esc(d.reason) + "</td><td>" + esc(d.source) + "</td><td>" + esc(d.detail) + "</td></tr>"; });
      b += "</table>";
    }
    b += "<h2>Effective config (secrets redacted)</h2><pre>" + esc(s.config) + "</pre>";
    return b;
  }
  function refresh() {
    fetch("/status.json", {cache: "no-store"}).then(function (r) { return r.json(); })
      .then(function (s) {
        var main = document.getElementById("status");
        main.innerHTML = render(s);
        main.setAttribute("data-refreshed", String(s.at_ms));
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);
})();
"#;
