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
        jail.set_env("ANNOTATOR__KAFKA__NOPE", "1");
        let err = Config::load(Some(Path::new("c.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        Ok(())
    });
}
