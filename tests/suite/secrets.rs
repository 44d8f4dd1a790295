//! No secret reaches a log, `check`'s output or an error message: the API key, the Redis
//! password in its URL, a SASL password, a service account's private key and the HMAC key
//! for account ids, each planted and then searched for.

use std::time::Duration;

use crate::common::*;

const REDIS_PASSWORD: &str = "redis-pw-SECRET-7f3a";
const SASL_PASSWORD: &str = "sasl-pw-SECRET-91c2";
const HMAC_KEY: &str = "hmac-key-SECRET-4d0e8b21";

/// Each secret and where it was planted, for the failure message.
fn find_secrets<'a>(text: &str, secrets: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(_, s)| text.contains(s))
        .map(|(what, _)| *what)
        .collect()
}

/// The binary's output for `args` at debug level, with `vars` set.
fn output(args: &[&str], vars: &[(&str, &str)]) -> String {
    let mut all: Vec<(&str, Option<&str>)> = vars.iter().map(|&(k, v)| (k, Some(v))).collect();
    all.push(("RUST_LOG", Some("debug")));
    run_binary(args, &all).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_debug_log_the_check_output_or_an_error() {
    let env = TestEnv::new("secrets").await;
    let dir = tempfile::tempdir().unwrap();
    let redis = PrivateRedis::start_with(dir.path(), &["--requirepass", REDIS_PASSWORD]);
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", redis.port);
    let (private, public) = rsa_key(dir.path(), "secretive");
    env.sandbox.trust_service_account(&public).unwrap();
    let key_file = service_account_file(dir.path(), "secretive", &private);
    // A line from the middle of the key's base64: what a leak of the key would show.
    let key_line = private.lines().nth(5).unwrap().to_owned();
    let secrets = [
        ("the API key", API_KEY),
        ("the Redis password", REDIS_PASSWORD),
        ("the SASL password", SASL_PASSWORD),
        ("the HMAC key", HMAC_KEY),
        ("the service account's private key", key_line.as_str()),
    ];
    let shared = format!(
        "{redis}\n[kafka.properties]\n\"sasl.password\" = \"{SASL_PASSWORD}\"\n\"sasl.username\" = \"annotator\"\n",
        redis = env.redis_toml(&redis_url)
    );
    let hmac = format!("account_id_hmac_key = \"{HMAC_KEY}\"\n");

    // A full run at debug level with Google credentials (the key file), Redis with a
    // password, the HMAC key and a SASL password in the properties.
    let config = config_without_key(
        &env,
        &format!(
            "{shared}[recaptcha]\ncredentials_file = \"{}\"\n{hmac}",
            key_file.display()
        ),
    );
    let home = dir.path().to_str().unwrap();
    let service = spawn_logged_with(config.path(), "debug", &clean_env(home, &[]));
    let events: Vec<(String, Option<String>, Option<String>)> = (0..10)
        .flat_map(|i| {
            let name = format!("projects/{PROJECT}/assessments/secret{i}");
            [
                (
                    "assessments".to_owned(),
                    Some(format!("k{i}")),
                    Some(format!(r#"{{"key":"k{i}","assessment":"{name}"}}"#)),
                ),
                (
                    "logins".to_owned(),
                    Some(format!("k{i}")),
                    Some(format!(
                        r#"{{"event_id":"s{i}","outcome":"password_correct","key":"k{i}","account_id":"user-{i}"}}"#
                    )),
                ),
            ]
        })
        .collect();
    env.produce_many(&events).await;
    env.wait_accepted(10, Duration::from_secs(60)).await;
    let log = service.stop("TERM");
    assert!(log.contains("DEBUG"), "the run logged at debug level");
    assert_eq!(find_secrets(&log, &secrets), Vec::<&str>::new(), "{log}");
    let recorded = env.sandbox.recorded();
    assert!(
        recorded
            .iter()
            .all(|r| r.body.get("accountId").is_none() && r.body.get("hashedAccountId").is_some()),
        "account ids went out only hashed: {recorded:?}"
    );

    // `check`, with the API key, and with the key file.
    let with_key = env.config_file(&format!("{shared}[recaptcha]\n{hmac}"));
    let out = output(
        &["check", "--config", with_key.path().to_str().unwrap()],
        &[],
    );
    assert!(out.contains("ok   credentials"), "{out}");
    assert_eq!(find_secrets(&out, &secrets), Vec::<&str>::new(), "{out}");
    let out = output(
        &[
            "check",
            "--offline",
            "--config",
            config.path().to_str().unwrap(),
        ],
        &[("HOME", home)],
    );
    assert!(out.contains("a token was obtained"), "{out}");
    assert_eq!(find_secrets(&out, &secrets), Vec::<&str>::new(), "{out}");

    // Errors: secrets of the wrong type, malformed, too short, or refused.
    let broken = [
        format!("[recaptcha]\napi_key = [\"{API_KEY}\"]\n"),
        format!("[cache]\nbackend = \"redis\"\nredis_url = \"redis://:{REDIS_PASSWORD}@[::1\"\n"),
        format!("[kafka.properties]\n\"sasl.password\" = [\"{SASL_PASSWORD}\"]\n"),
        "[recaptcha]\naccount_id_hmac_key = \"hmac-key-SECRET\"\n".to_owned(),
    ];
    let short_hmac = ("the short HMAC key", "hmac-key-SECRET");
    for extra in &broken {
        let file = env.config_file(extra);
        let out = output(
            &[
                "check",
                "--offline",
                "--config",
                file.path().to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.contains("rror"), "{extra}: an error\n{out}");
        let mut all = secrets.to_vec();
        all.push(short_hmac);
        assert_eq!(
            find_secrets(&out, &all),
            Vec::<&str>::new(),
            "{extra}\n{out}"
        );
    }
    // A key file that is not JSON, and one that is malformed halfway through the key.
    let garbled = dir.path().join("garbled.json");
    std::fs::write(
        &garbled,
        &std::fs::read_to_string(&key_file).unwrap()[..600],
    )
    .unwrap();
    let file = config_without_key(
        &env,
        &format!(
            "[recaptcha]\ncredentials_file = \"{}\"\n",
            garbled.display()
        ),
    );
    let out = output(
        &[
            "check",
            "--offline",
            "--config",
            file.path().to_str().unwrap(),
        ],
        &[("HOME", home)],
    );
    assert!(
        out.contains("garbled.json is not a credentials file"),
        "{out}"
    );
    assert_eq!(find_secrets(&out, &secrets), Vec::<&str>::new(), "{out}");
    // The API key from the environment, refused by the endpoint.
    let out = output(
        &["check", "--config", with_key.path().to_str().unwrap()],
        &[("ANNOTATOR__RECAPTCHA__API_KEY", "wrong-key-SECRET-55")],
    );
    assert!(out.contains("FAIL credentials"), "{out}");
    assert!(!out.contains("wrong-key-SECRET-55"), "{out}");
}
