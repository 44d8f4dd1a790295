//! The environment layer and config error reporting.

use super::*;

#[test]
#[allow(clippy::result_large_err)]
fn every_problem_is_reported_at_once_with_its_key_and_source() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "[cache]\nttl = \"forever\"\n[delivery]\nmax_in_flight = \"many\"",
        )?;
        jail.set_env("ANNOTATOR__ADMIN__LAG_INTERVAL", "soon");
        let err = Config::load(Some(Path::new("c.toml")))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        for part in [
            "cache.ttl:",
            "delivery.max_in_flight:",
            "c.toml",
            "admin.lag_interval:",
            "(from the environment variable ANNOTATOR__ADMIN__LAG_INTERVAL)",
        ] {
            assert!(err.contains(part), "{part} missing: {err}");
        }
        assert!(!err.contains("default."), "figment's profile shows: {err}");
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn environment_overrides_every_level() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "[kafka]\nbrokers = \"file:1\"\n[recaptcha]\nproject = \"p\"",
        )?;
        jail.set_env("ANNOTATOR__KAFKA__BROKERS", "127.0.0.1:19092");
        jail.set_env("ANNOTATOR__KAFKA__TOPICS__LOGINS", "my-logins");
        jail.set_env("ANNOTATOR__RECAPTCHA__PROJECT", "123456789");
        jail.set_env(
            "ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS",
            "[123456789, \"other\"]",
        );
        jail.set_env("ANNOTATOR__DRY_RUN", "true");
        let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(config.kafka.brokers, "127.0.0.1:19092");
        assert_eq!(config.kafka.topics.logins, "my-logins");
        assert_eq!(config.recaptcha.project.as_deref(), Some("123456789"));
        assert_eq!(
            config.recaptcha.allowed_projects,
            vec!["123456789", "other"]
        );
        assert!(config.dry_run);
        // Values that parse as numbers where strings are wanted, librdkafka properties
        // (`_` read as `.`), a comma-separated list.
        jail.set_env("ANNOTATOR__KAFKA__GROUP_ID", "42");
        jail.set_env("ANNOTATOR__KAFKA__TOPICS__DEAD_LETTER", "1234");
        jail.set_env("ANNOTATOR__KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret");
        jail.set_env("ANNOTATOR__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
        jail.set_env("ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS", "123456789, other");
        let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(config.kafka.group_id, "42");
        assert_eq!(config.kafka.topics.dead_letter, "1234");
        assert_eq!(config.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(config.kafka.properties["session.timeout.ms"], "6000");
        assert_eq!(
            config.recaptcha.allowed_projects,
            vec!["123456789", "other"]
        );
        // Secrets from files, through the environment as a Kubernetes pod gives them.
        jail.create_file("api-key", "AIza-from-a-file\n")?;
        jail.create_file("sasl", "sasl-from-a-file\n")?;
        jail.set_env("ANNOTATOR__RECAPTCHA__API_KEY_FILE", "api-key");
        jail.set_env(
            "ANNOTATOR__KAFKA__PROPERTIES__SSL_KEY_PASSWORD_FILE",
            "sasl",
        );
        let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(config.recaptcha.api_key.as_ref().unwrap()),
            "AIza-from-a-file"
        );
        assert_eq!(
            config.kafka.properties["ssl.key.password"],
            "sasl-from-a-file"
        );
        jail.set_env("ANNOTATOR__KAFKA__NOPE", "1");
        let err = Config::load(Some(Path::new("c.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        Ok(())
    });
}

/// Config paths the environment may name, and a few it may not.
const FUZZ_PATHS: &[&str] = &[
    "KAFKA__BROKERS",
    "KAFKA__GROUP_ID",
    "KAFKA__TOPICS__LOGINS",
    "KAFKA__PROPERTIES__SASL_PASSWORD",
    "KAFKA__PROPERTIES__SESSION_TIMEOUT_MS",
    "KAFKA__COMMIT_INTERVAL",
    "RECAPTCHA__API_KEY",
    "RECAPTCHA__PROJECT",
    "RECAPTCHA__ALLOWED_PROJECTS",
    "RECAPTCHA__ACCOUNT_ID_HMAC_KEY",
    "RECAPTCHA__REQUEST_TIMEOUT",
    "CACHE__REDIS_URL",
    "CACHE__BACKEND",
    "CACHE__TTL",
    "DELIVERY__MAX_IN_FLIGHT",
    "DELIVERY__RATE_LIMIT",
    "DELIVERY__PROJECT_RATE_LIMITS",
    "RULES__LOGINS__PASSWORD_CORRECT__ANNOTATION",
    "RULES__LOGINS",
    "ADMIN__LISTEN",
    "DRY_RUN",
    "",
    "__",
    "KAFKA____BROKERS",
    "NOT_A_SECTION__X",
];

proptest::proptest! {
    /// Any environment loads or fails with an error; a secret's value is never quoted in it.
    #[test]
    fn any_environment_loads_or_is_refused_without_quoting_a_secret(
        vars in proptest::collection::vec(
            (proptest::sample::select(FUZZ_PATHS), "[ -~]{0,24}|\\[[0-9a-z\", ]{0,20}\\]|[0-9]{1,25}|true|\\{[a-z=\" ]{0,16}\\}"),
            0..6,
        )
    ) {
        let overrides = EnvOverrides::from_vars(
            vars.iter().map(|(path, value)| (format!("ANNOTATOR__{path}"), value.clone())),
        );
        if let Err(e) = load_with_env(None, overrides) {
            let text = e.to_string();
            for (path, value) in &vars {
                let secret = ["API_KEY", "REDIS_URL", "HMAC_KEY", "SASL_PASSWORD"]
                    .iter()
                    .any(|s| path.ends_with(s));
                if secret && value.len() >= 6 {
                    proptest::prop_assert!(!text.contains(value.as_str()), "{path}={value}: {text}");
                }
            }
        }
    }
}
