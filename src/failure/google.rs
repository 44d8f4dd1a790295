//! The annotate endpoint's answers, classified (SPEC 3, `reference/annotate-api.md`):
//! Google's error body, `Retry-After` and `RetryInfo`.

use std::time::Duration;

use super::{DeadLetter, DeadLetterReason, Failure, Halt, HaltScope, RetryCause};

/// Longest `Retry-After` honoured; a larger value is capped (the event is never dropped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Parses `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(delta.min(MAX_RETRY_AFTER))
}

/// Google's error body (`{"error": {"code", "message", "status", "details"}}`), the parts
/// that decide what happens next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoogleError {
    /// `google.rpc.ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub reason: Option<String>,
    /// `google.rpc.RetryInfo.retryDelay`.
    pub retry_delay: Option<Duration>,
    /// `status` and `message`, cut to a log line.
    pub detail: String,
}

/// Longest error detail kept from a response body.
const MAX_DETAIL: usize = 300;

impl GoogleError {
    /// Parses an error body; `None` when it is not Google's error shape.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let error = value.get("error")?.as_object()?;
        let text = |key: &str| error.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        let mut detail = format!("{} {}", text("status"), text("message"));
        detail.truncate(detail.floor_char_boundary(MAX_DETAIL));
        let details = error.get("details").and_then(|d| d.as_array());
        let reason = details
            .into_iter()
            .flatten()
            .find_map(|d| d.get("reason")?.as_str())
            .map(str::to_owned);
        let retry_delay = details
            .into_iter()
            .flatten()
            .find_map(|d| d.get("retryDelay")?.as_str())
            .and_then(parse_proto_duration);
        Some(Self {
            reason,
            retry_delay,
            detail,
        })
    }
}

/// A proto3 JSON `Duration` (`"1.5s"`), capped like `Retry-After`.
fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// What the endpoint answered, as far as the class depends on it.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// Google's error body, when the answer carried one.
    pub error: Option<GoogleError>,
    /// For a 2xx: whether the body is a JSON object, as Google's `{}` is. An HTML page from
    /// a catch-all server or a captive portal is not.
    pub json_object: bool,
}

/// Whether `body` is one JSON object (what Google's annotate answers on success: `{}`).
pub fn is_json_object(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok()
}

/// Classifies an answer of the annotate endpoint (SPEC 3, `reference/annotate-api.md`).
pub fn classify(answer: &Answer) -> Result<(), Failure> {
    let status = answer.status;
    let google = answer.error.as_ref();
    let detail = || google.map_or_else(|| format!("HTTP {status}"), |e| e.detail.clone());
    // The server's minimum wait: the larger of `Retry-After` and `RetryInfo`.
    let after = answer.retry_after.max(google.and_then(|e| e.retry_delay));
    let retry = |cause| Err(Failure::retry(cause, after, format!("HTTP {status}")));
    match status {
        200..=299 if answer.json_object => Ok(()),
        // Taken as accepted, the event would be committed as annotated.
        200..=299 => Err(Halt::service(
            Some(status),
            format!(
                "HTTP {status} with a body that is not a JSON object (Google answers {{}}): something else answers for recaptcha.endpoint (a catch-all server, a proxy, a captive portal)"
            ),
        )),
        300..=399 => Err(Halt::service(
            Some(status),
            format!("HTTP {status}: the endpoint redirects; recaptcha.endpoint is wrong"),
        )),
        // API_KEY_INVALID, API_KEY_EXPIRED, API_KEY_SERVICE_BLOCKED ...: the key, not the
        // event, is wrong.
        400 if google
            .and_then(|e| e.reason.as_deref())
            .is_some_and(|r| r.starts_with("API_KEY_")) =>
        {
            Err(Halt::service(Some(status), detail()))
        }
        401 => Err(Halt::service(Some(status), detail())),
        403 => Err(Failure::Halt(Halt {
            scope: HaltScope::Project,
            status: Some(status),
            detail: detail(),
        })),
        404 if google.is_none() => Err(Halt::service(
            Some(status),
            "HTTP 404 without Google's error body: recaptcha.endpoint is wrong",
        )),
        408 => retry(RetryCause::Timeout),
        409 => retry(RetryCause::Aborted),
        429 => retry(RetryCause::RateLimited),
        500..=599 => retry(RetryCause::ServerError),
        // Only Google's own 400 and 404 are about the event.
        400 | 404 if google.is_some() => Err(Failure::DeadLetter(DeadLetter {
            reason: DeadLetterReason::Rejected,
            detail: detail(),
            status: Some(status),
        })),
        // 405, 407, 413, 421, 431, a load balancer's 400 ...: the call did not reach
        // Google's annotate, whatever the event.
        _ => Err(Halt::service(
            Some(status),
            format!(
                "HTTP {status}{}: not Google's answer about the event; recaptcha.endpoint is wrong or something between refuses the call (a proxy's 407, a load balancer)",
                if google.is_some() {
                    ""
                } else {
                    " without Google's error body"
                }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(result: Result<(), Failure>) -> Option<RetryCause> {
        match result {
            Err(Failure::Retry(r)) => Some(r.cause),
            _ => None,
        }
    }

    fn google(reason: Option<&str>) -> Option<GoogleError> {
        Some(GoogleError {
            reason: reason.map(str::to_owned),
            ..GoogleError::default()
        })
    }

    fn answer(status: u16, error: Option<GoogleError>) -> Answer {
        Answer {
            status,
            retry_after: None,
            error,
            json_object: true,
        }
    }

    #[test]
    fn classes_follow_the_spec() {
        let c = |s, r| classify(&answer(s, google(r)));
        assert_eq!(c(200, None), Ok(()));
        for status in [400, 404] {
            assert!(matches!(
                c(status, Some("INVALID_ARGUMENT")),
                Err(Failure::DeadLetter(DeadLetter {
                    reason: DeadLetterReason::Rejected,
                    status: Some(s),
                    ..
                })) if s == status
            ));
        }
        assert!(matches!(
            c(400, Some("API_KEY_INVALID")),
            Err(Failure::Halt(Halt {
                status: Some(400),
                ..
            }))
        ));
        assert!(matches!(
            c(401, None),
            Err(Failure::Halt(Halt {
                scope: HaltScope::Service,
                ..
            }))
        ));
        assert!(matches!(
            c(403, Some("IAM_PERMISSION_DENIED")),
            Err(Failure::Halt(Halt {
                scope: HaltScope::Project,
                ..
            }))
        ));
        assert_eq!(cause(c(429, None)), Some(RetryCause::RateLimited));
        assert_eq!(cause(c(409, None)), Some(RetryCause::Aborted));
        assert_eq!(cause(c(408, None)), Some(RetryCause::Timeout));
        for s in [500, 502, 503, 504] {
            assert_eq!(cause(c(s, None)), Some(RetryCause::ServerError));
        }
    }

    #[test]
    fn a_wrong_endpoint_halts_instead_of_retrying_or_dead_lettering() {
        for status in [301, 302, 307, 308] {
            let halt = classify(&answer(status, None));
            assert!(
                matches!(&halt, Err(Failure::Halt(h)) if h.detail.contains("recaptcha.endpoint")),
                "{status}: {halt:?}"
            );
        }
        // A 404 with Google's error body is about the assessment; without it, the URL is wrong.
        assert!(matches!(
            classify(&answer(404, None)),
            Err(Failure::Halt(h)) if h.detail.contains("recaptcha.endpoint")
        ));
        let body =
            br#"{"error":{"code":404,"message":"Assessment not found.","status":"NOT_FOUND"}}"#;
        assert!(matches!(
            classify(&answer(404, GoogleError::parse(body))),
            Err(Failure::DeadLetter(DeadLetter {
                status: Some(404),
                ..
            }))
        ));
    }

    #[test]
    fn answers_that_are_not_googles_halt_naming_the_endpoint() {
        // A 4xx without Google's error body, or one Google never gives about an event.
        for status in [400, 405, 407, 410, 413, 421, 431] {
            let halt = classify(&answer(status, None));
            assert!(
                matches!(&halt, Err(Failure::Halt(h)) if h.scope == HaltScope::Service
                    && h.detail.contains("recaptcha.endpoint")),
                "{status}: {halt:?}"
            );
        }
        // A 2xx whose body is an HTML page is not an annotation.
        let html = Answer {
            json_object: is_json_object(b"<html><body>Welcome</body></html>"),
            ..answer(200, None)
        };
        assert!(matches!(
            classify(&html),
            Err(Failure::Halt(h)) if h.detail.contains("recaptcha.endpoint")
        ));
        for body in [&b"{}"[..], b"{}\n", b" { } "] {
            assert!(is_json_object(body), "{body:?}");
        }
        for body in [&b""[..], b"[]", b"null", b"\"ok\"", b"<html>"] {
            assert!(!is_json_object(body), "{body:?}");
        }
    }

    #[test]
    fn retry_info_is_honoured_like_retry_after() {
        let body = br#"{"error":{"code":429,"message":"Quota exceeded.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7.5s"}]}}"#;
        let error = GoogleError::parse(body).unwrap();
        assert_eq!(error.reason.as_deref(), Some("RATE_LIMIT_EXCEEDED"));
        assert_eq!(error.retry_delay, Some(Duration::from_millis(7500)));
        let with = |retry_after| Answer {
            status: 429,
            retry_after,
            error: Some(error.clone()),
            json_object: false,
        };
        for (retry_after, expected) in [
            (None, 7500),
            (Some(Duration::from_secs(2)), 7500),
            (Some(Duration::from_secs(9)), 9000),
        ] {
            match classify(&with(retry_after)) {
                Err(Failure::Retry(r)) => {
                    assert_eq!(r.after, Some(Duration::from_millis(expected)))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(GoogleError::parse(b"<html>"), None);
        assert_eq!(parse_proto_duration("-1s"), None);
        assert_eq!(parse_proto_duration("1e9s"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
