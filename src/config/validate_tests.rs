//! Validation: every problem reported with its key.

use super::*;

#[test]
fn sizes_take_units() {
    let c =
        Config::from_toml("[delivery]\nmax_event_bytes = \"128KiB\"\nmax_pending_bytes = 20000000")
            .unwrap();
    assert_eq!(c.delivery.max_event_bytes, 128 * 1024);
    assert_eq!(c.delivery.max_pending_bytes, 20_000_000);
    assert_eq!(
        Config::from_toml("").unwrap().delivery.max_event_bytes,
        65536
    );
    let err = Config::from_toml("[delivery]\nmax_event_bytes = \"64 furlongs\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_event_bytes"), "{err}");
}

#[test]
fn unspecified_rules_are_refused_and_deprecated_ones_warned_about() {
    for bad in [
        "annotation = \"ANNOTATION_UNSPECIFIED\"",
        "reasons = [\"REASON_UNSPECIFIED\"]",
    ] {
        let err = Config::from_toml(&format!("[rules.logins.x]\n{bad}"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules.logins.x") && err.contains("UNSPECIFIED"),
            "{err}"
        );
    }
    let v = Config::from_toml("[rules.logins.ok]\nannotation = \"PASSWORD_CORRECT\"")
        .unwrap()
        .validate()
        .unwrap();
    assert!(
        v.warnings
            .iter()
            .any(|w| w.contains("rules.logins.ok") && w.contains("deprecated")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn the_endpoint_is_a_base_url_and_never_plain_http_to_another_host() {
    let check = |endpoint: &str, extra: &str| {
        Config::from_toml(&format!("[recaptcha]\nendpoint = \"{endpoint}\"\n{extra}"))
            .unwrap()
            .validate()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for ok in [
        "https://recaptchaenterprise.googleapis.com",
        "https://recaptchaenterprise.googleapis.com/",
        "http://127.0.0.1:8085",
        "http://localhost:8085",
        "http://[::1]:8085",
    ] {
        assert!(check(ok, "").is_ok(), "{ok}: {:?}", check(ok, ""));
    }
    for bad in [
        "https://example.com/v1",
        "https://example.com/?key=x",
        "https://example.com/#x",
    ] {
        let err = check(bad, "").unwrap_err();
        assert!(
            err.contains("recaptcha.endpoint") && err.contains("base URL"),
            "{bad}: {err}"
        );
    }
    let err = check("http://sandbox:8085", "").unwrap_err();
    assert!(
        err.contains("recaptcha.endpoint") && err.contains("allow_insecure_endpoint"),
        "{err}"
    );
    assert!(check("http://sandbox:8085", "allow_insecure_endpoint = true").is_ok());
    assert!(check("http://10.0.0.7:8085", "allow_insecure_endpoint = true").is_ok());
    let err = check("https://user:secret@example.com", "").unwrap_err();
    assert!(
        err.contains("recaptcha.endpoint") && err.contains("user or password"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

#[test]
fn defaults_validate() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(config.kafka.topics.fraud_signals, "fraud-signals");
    assert_eq!(config.cache.ttl, Duration::from_secs(90 * 86400));
    // A safe share of the default quota unless said otherwise; 0 is none, explicitly.
    assert_eq!(config.delivery.rate_limit, 100);
    assert!(config.validate().is_ok());
    let none = Config::from_toml("[delivery]\nrate_limit = 0").unwrap();
    assert_eq!(none.delivery.rate_limit, 0);
    assert!(none.validate().is_ok());
}

#[test]
fn bad_values_are_all_reported_with_their_key() {
    let config = Config::from_toml(
        "[recaptcha]\nendpoint = \"ftp://x\"\nproject = \"a/b\"\n[delivery]\nmax_in_flight = 0\nworker_threads = 0\n[admin]\nlisten = \"nope\"",
    )
    .unwrap();
    let err = config.validate().unwrap_err().to_string();
    for key in [
        "recaptcha.endpoint",
        "recaptcha.project",
        "delivery.max_in_flight",
        "delivery.worker_threads",
        "admin.listen",
    ] {
        assert!(err.contains(key), "{key} missing from {err}");
    }
    let err = Config::from_toml("[cache]\nttl = \"forever\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ttl"), "{err}");
}

#[test]
fn rules_from_config_are_checked_against_the_enums() {
    let config = Config::from_toml(
        "[rules.logins.captcha_solved]\nannotation = \"LEGITIMATE\"\nreasons = [\"CORRECT_PASSWORD\"]",
    )
    .unwrap();
    let v = config.validate().unwrap();
    assert!(
        v.rules
            .get(OutcomeTopic::Logins, "captcha_solved")
            .is_some()
    );
    let err = Config::from_toml("[rules.logins.x]\nannotation = \"MAYBE\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("MAYBE"), "{err}");
}

#[test]
fn budget_keys_are_checked_and_an_empty_api_key_is_refused() {
    let err = Config::from_toml(
        "[recaptcha]\napi_key = \" \"\n[delivery]\nproject_rate_limits = { \"Bad Project\" = 5, \"good-project\" = 0 }\nrate_limit_fallback = 0",
    )
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    for key in [
        "recaptcha.api_key: empty",
        "delivery.project_rate_limits: \"Bad Project\" is not a project id",
        "delivery.project_rate_limits.good-project: must be at least 1",
        "delivery.rate_limit_fallback: must be at least 1",
    ] {
        assert!(err.contains(key), "{key} missing: {err}");
    }
    let warned = Config::from_toml(
        "[delivery]\nrate_limit = 100\nproject_rate_limits = { \"good-project\" = 500 }\nrate_limit_fallback = 200",
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(warned.warnings.len(), 2, "{:?}", warned.warnings);
}

#[test]
fn a_bad_secret_value_is_not_quoted_back() {
    let err = Config::from_toml(
        "[kafka.properties]\n\"sasl.password\" = 123456\n[recaptcha]\napi_key = 987654",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("kafka.properties"), "{err}");
    assert!(!err.contains("123456") && !err.contains("987654"), "{err}");
}

#[test]
fn the_consumer_protocol_refuses_the_classic_client_settings() {
    let config = Config::from_toml(
        "[kafka.properties]\n\"group.protocol\" = \"consumer\"\n\"session.timeout.ms\" = \"6000\"\n\"partition.assignment.strategy\" = \"range\"",
    )
    .unwrap();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("kafka.properties.\"session.timeout.ms\""),
        "{err}"
    );
    assert!(
        err.contains("kafka.properties.\"partition.assignment.strategy\""),
        "{err}"
    );
    assert!(err.contains("group.consumer."), "{err}");
    let ok = Config::from_toml("[kafka.properties]\n\"group.protocol\" = \"consumer\"").unwrap();
    assert!(ok.validate().is_ok());
}

#[test]
fn reading_uncommitted_transactions_is_warned_about() {
    let config =
        Config::from_toml("[kafka.properties]\n\"isolation.level\" = \"read_uncommitted\"")
            .unwrap();
    let validated = config.validate().unwrap();
    assert!(
        validated
            .warnings
            .iter()
            .any(|w| w.contains("isolation.level") && w.contains("aborted")),
        "{:?}",
        validated.warnings
    );
}

#[test]
fn a_project_cap_spelt_in_the_other_form_than_recaptcha_project_is_warned_about() {
    let warned = |project: &str, cap: &str| {
        let config = Config::from_toml(&format!(
            "[recaptcha]\nproject = \"{project}\"\n[delivery]\nproject_rate_limits = {{ \"{cap}\" = 10 }}"
        ))
        .unwrap();
        let validated = config.validate().unwrap();
        validated
            .warnings
            .iter()
            .any(|w| w.contains(&format!("project_rate_limits.{cap}")) && w.contains("exactly"))
    };
    assert!(warned("123456789012", "shop-prod"));
    assert!(warned("shop-prod", "123456789012"));
    assert!(!warned("shop-prod", "blog-prod"));
    assert!(!warned("123456789012", "987654321098"));
}

#[test]
fn absurd_durations_and_counts_are_refused_not_panicked_on() {
    let config = Config::from_toml(
        "[delivery]\nrebalance_timeout = \"1000000000d\"\nhalt_retry = \"999999999d\"\nmax_in_flight = 3000000000\nmax_pending = 3000000000\n[admin]\nlag_interval = \"100000d\"",
    )
    .unwrap();
    let err = config.validate().unwrap_err().to_string();
    for key in [
        "delivery.rebalance_timeout: at most 3650d",
        "delivery.halt_retry: at most 3650d",
        "delivery.max_in_flight: at most",
        "admin.lag_interval: at most 3650d",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}
