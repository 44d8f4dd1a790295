//! Secrets from files: every secret key also takes a file, as Kubernetes mounts Secrets and
//! Docker passes them (`recaptcha.api_key_file`, `recaptcha.account_id_hmac_key_file`,
//! `cache.redis_url_file`, and `kafka.properties."<name>_file"` for any librdkafka setting,
//! `sasl.password_file` say; `ANNOTATOR__RECAPTCHA__API_KEY_FILE` and so on from the
//! environment). The file's contents, less one trailing line break, become the value; they
//! are never printed, and an error names the file and the key, never what it holds.

use std::path::Path;

use secrecy::SecretString;

use super::{Config, ConfigError};

/// Suffix of a librdkafka setting read from a file (librdkafka has none of its own that ends
/// so: its file settings end in `.location`).
const FILE_SUFFIX: &str = "_file";

/// Reads every `*_file` secret into its key.
pub(super) fn resolve(mut config: Config) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let r = &mut config.recaptcha;
    if let Some(path) = r.api_key_file.clone() {
        if r.api_key.is_some() {
            problems.push(both("recaptcha.api_key"));
        } else if let Some(key) = read(&path, "recaptcha.api_key_file", &mut problems) {
            r.api_key = Some(key);
        }
    }
    if let Some(path) = r.account_id_hmac_key_file.clone() {
        if r.account_id_hmac_key.is_some() {
            problems.push(both("recaptcha.account_id_hmac_key"));
        } else if let Some(key) = read(&path, "recaptcha.account_id_hmac_key_file", &mut problems) {
            r.account_id_hmac_key = Some(key);
        }
    }
    if let Some(path) = config.cache.redis_url_file.clone()
        && let Some(url) = read(&path, "cache.redis_url_file", &mut problems)
    {
        config.cache.redis_url = url;
    }
    let from_files: Vec<String> = config
        .kafka
        .properties
        .keys()
        .filter(|k| k.ends_with(FILE_SUFFIX))
        .cloned()
        .collect();
    for file_key in from_files {
        let name = file_key.trim_end_matches(FILE_SUFFIX).to_owned();
        let path = config
            .kafka
            .properties
            .remove(&file_key)
            .unwrap_or_default();
        if config.kafka.properties.contains_key(&name) {
            problems.push(both(&format!("kafka.properties.\"{name}\"")));
            continue;
        }
        let what = format!("kafka.properties.\"{file_key}\"");
        if let Some(value) = read(Path::new(&path), &what, &mut problems) {
            use secrecy::ExposeSecret as _;
            config
                .kafka
                .properties
                .insert(name, value.expose_secret().to_owned());
        }
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn both(key: &str) -> String {
    format!("{key} and its _file are both set: keep one")
}

/// The secret in `path` less one trailing line break; `None` (and a problem naming `key`
/// and the file, never its contents) when it cannot be read.
fn read(path: &Path, key: &str, problems: &mut Vec<String>) -> Option<SecretString> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let Ok(mut text) = String::from_utf8(bytes) else {
                problems.push(format!("{key}: {} is not UTF-8 text", path.display()));
                return None;
            };
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Some(SecretString::from(text))
        }
        Err(e) => {
            problems.push(format!(
                "{key}: cannot read {}: {}",
                path.display(),
                e.kind()
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn with_files(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml(toml)
    }

    #[test]
    fn every_secret_key_takes_a_file_and_an_error_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let key = file("api-key", "AIza-FROM-FILE\n");
        let hmac = file("hmac", "hmac-FROM-FILE\r\n");
        let redis = file("redis", "rediss://:pw-FROM-FILE@redis:6380\n");
        let sasl = file("sasl", "sasl-FROM-FILE");
        let config = with_files(&format!(
            "[recaptcha]\napi_key_file = \"{key}\"\naccount_id_hmac_key_file = \"{hmac}\"\n[cache]\nredis_url_file = \"{redis}\"\n[kafka.properties]\n\"sasl.password_file\" = \"{sasl}\"\n"
        ))
        .unwrap();
        let r = &config.recaptcha;
        assert_eq!(
            r.api_key.as_ref().unwrap().expose_secret(),
            "AIza-FROM-FILE"
        );
        assert_eq!(
            r.account_id_hmac_key.as_ref().unwrap().expose_secret(),
            "hmac-FROM-FILE"
        );
        assert_eq!(
            config.cache.redis_url.expose_secret(),
            "rediss://:pw-FROM-FILE@redis:6380"
        );
        assert_eq!(config.kafka.properties["sasl.password"], "sasl-FROM-FILE");
        assert!(!config.kafka.properties.contains_key("sasl.password_file"));
        // Printed (as `check` prints it): the files' contents never appear.
        let shown = config.redacted_toml();
        assert!(!shown.contains("FROM-FILE"), "{shown}");

        // Both forms of one key, and a file that cannot be read.
        let err = with_files(&format!(
            "[recaptcha]\napi_key = \"inline\"\napi_key_file = \"{key}\"\n[kafka.properties]\n\"sasl.password_file\" = \"/no/such/file\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("recaptcha.api_key and its _file are both set"),
            "{err}"
        );
        assert!(
            err.contains("kafka.properties.\"sasl.password_file\": cannot read /no/such/file"),
            "{err}"
        );
        assert!(!err.contains("FROM-FILE"), "{err}");
    }
}
