//! The `ANNOTATOR__<SECTION>__<KEY>` environment overrides, and the serde helpers that let
//! one key take the forms an environment variable gives it.

use std::collections::BTreeSet;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serializer};

use super::{Config, ConfigError};

/// Prefix of environment overrides; `__` separates levels.
pub const ENV_PREFIX: &str = "ANNOTATOR__";

/// The name figment gives the environment provider's values.
const ENV_METADATA: &str = "environment variable(s)";

/// Accepts a string or an integer (a project number given through the environment parses
/// as an integer).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::U(u) => u.to_string(),
    })
}

pub(super) fn opt_string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// A list, or one comma-separated string (`ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS=a,b`).
pub(super) fn vec_string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "string_or_number")] String);
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Many(Vec<Item>),
        One(Item),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Many(items) => items.into_iter().map(|i| i.0).collect(),
        Raw::One(Item(one)) => one
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// A size in bytes: a number, or a string with a unit (`64KiB`, `16MiB`, `1MB`, `500B`).
pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    let parse = |text: &str| -> Option<u64> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            _ => return None,
        };
        number.parse::<u64>().ok()?.checked_mul(factor)
    };
    let bytes = match Raw::deserialize(d)? {
        Raw::N(n) => n,
        Raw::S(s) => parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a size (a number of bytes, or with B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        })?,
    };
    usize::try_from(bytes).map_err(|_| serde::de::Error::custom("size too large"))
}

/// The `ANNOTATOR__…` environment overrides as a figment provider. Names are split on `__`
/// and lower-cased; values parse as figment's own environment values do (`42` a number,
/// `true` a boolean, `[a, b]` a list), except that a value whose key wants a string is kept
/// verbatim (those keys are learned from the type error of a first try). Under
/// `kafka.properties` the rest of the name is a librdkafka property, `_` read as `.`
/// (`ANNOTATOR__KAFKA__PROPERTIES__SASL_PASSWORD` sets `sasl.password`), its value a string;
/// a trailing `_FILE` stays `_file` (`..._SASL_PASSWORD_FILE` sets `sasl.password_file`).
struct EnvOverrides {
    vars: Vec<(Vec<String>, String)>,
    verbatim: BTreeSet<Vec<String>>,
}

impl EnvOverrides {
    fn from_process() -> Self {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The overrides among `vars` (name, value): those named `ANNOTATOR__...`.
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars
                .into_iter()
                .filter_map(|(name, value)| Some((env_path(&name)?, value)))
                .collect(),
            verbatim: Default::default(),
        }
    }
}

/// The config path an environment variable name overrides, if it is one of ours.
fn env_path(name: &str) -> Option<Vec<String>> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let parts: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if parts.len() > 2 && parts[0] == "kafka" && parts[1] == "properties" {
        let joined = parts[2..].join("__");
        // `..._FILE`: the property read from a file (`SASL_PASSWORD_FILE` is
        // `sasl.password_file`).
        let property = match joined.strip_suffix("_file") {
            Some(name) => format!("{}_file", name.replace('_', ".")),
            None => joined.replace('_', "."),
        };
        return Some(vec![parts[0].clone(), parts[1].clone(), property]);
    }
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, raw) in &self.vars {
            let verbatim = path.starts_with(&["kafka".to_owned(), "properties".to_owned()])
                || self.verbatim.contains(path);
            let value = if verbatim {
                Value::from(raw.clone())
            } else {
                raw.parse::<Value>()
                    .unwrap_or_else(|_| Value::from(raw.clone()))
            };
            let (last, parents) = path.split_last().expect("env_path is never empty");
            let mut dict = &mut root;
            for part in parents {
                let entry = dict
                    .entry(part.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, inner) = entry else {
                    unreachable!("just made a dict")
                };
                dict = inner;
            }
            dict.insert(last.clone(), value);
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Loads `path` (when given) under the environment overrides of this process.
pub(super) fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, EnvOverrides::from_process())
}

fn load_with_env(path: Option<&Path>, mut env: EnvOverrides) -> Result<Config, ConfigError> {
    if let Some(path) = path
        && !path.exists()
    {
        return Err(ConfigError::Missing(path.to_owned()));
    }
    loop {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        let error = match figment.merge(&env).extract() {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        // An environment value that parsed as a number or boolean where a string is
        // wanted (`ANNOTATOR__KAFKA__GROUP_ID=42`): keep it verbatim and try again.
        let wants_string: Vec<Vec<String>> = error
                .clone()
                .into_iter()
                .filter(|e| {
                    e.metadata
                        .as_ref()
                        .is_some_and(|m| m.name == env.metadata().name)
                        && matches!(&e.kind, figment::error::Kind::InvalidType(_, expected) if expected.contains("string"))
                })
                .map(|e| e.path)
                .filter(|p| !env.verbatim.contains(p))
                .collect();
        if wants_string.is_empty() {
            let mut figment = Figment::new();
            if let Some(path) = path {
                figment = figment.merge(Toml::file_exact(path));
            }
            return Err(every_problem(&figment.merge(&env), &error));
        }
        env.verbatim.extend(wants_string);
    }
}

/// Every problem of a config that does not deserialize, each named by its key and where it
/// came from (the file, or the environment variable).
pub(super) fn every_problem(figment: &Figment, first: &figment::Error) -> ConfigError {
    fn section<T: serde::de::DeserializeOwned>(
        figment: &Figment,
        key: &str,
        errors: &mut Vec<figment::Error>,
    ) {
        if figment.find_value(key).is_err() {
            return;
        }
        let Err(whole) = figment.extract_inner::<T>(key) else {
            return;
        };
        // serde stops at the first problem of a section: each of its keys is read alone
        // (over the defaults) to find every one, and keeps where it came from.
        let before = errors.len();
        if let Ok(dict) = figment.extract_inner::<Dict>(key) {
            for (name, value) in &dict {
                let alone =
                    Figment::from(figment::providers::Serialized::defaults(Dict::from([(
                        name.clone(),
                        value.clone(),
                    )])));
                if let Err(e) = alone.extract::<T>() {
                    errors.extend(e.into_iter().map(|mut e| {
                        e.path.insert(0, key.to_owned());
                        if e.path.len() == 1 {
                            e.path.push(name.clone());
                        }
                        // Where the value itself came from (the leaf), else its table.
                        e.metadata = figment
                            .find_metadata(&e.path.join("."))
                            .or_else(|| figment.find_metadata(&format!("{key}.{name}")))
                            .cloned();
                        e
                    }));
                }
            }
        }
        if errors.len() == before {
            // figment puts the section's key last; it goes first.
            errors.extend(whole.into_iter().map(|mut e| {
                if e.path.last().is_some_and(|last| last == key) {
                    e.path.pop();
                    e.path.insert(0, key.to_owned());
                }
                e
            }));
        }
    }
    let mut errors: Vec<figment::Error> = Vec::new();
    section::<super::KafkaConfig>(figment, "kafka", &mut errors);
    section::<super::RecaptchaConfig>(figment, "recaptcha", &mut errors);
    section::<super::CacheConfig>(figment, "cache", &mut errors);
    section::<super::DeliveryConfig>(figment, "delivery", &mut errors);
    section::<super::AdminConfig>(figment, "admin", &mut errors);
    section::<super::LogConfig>(figment, "log", &mut errors);
    section::<super::RulesConfig>(figment, "rules", &mut errors);
    section::<bool>(figment, "dry_run", &mut errors);
    const SECTIONS: [&str; 8] = [
        "kafka",
        "recaptcha",
        "cache",
        "delivery",
        "admin",
        "log",
        "rules",
        "dry_run",
    ];
    let mut problems: Vec<String> = Vec::new();
    if let Ok(top) = figment.extract::<Dict>() {
        for key in top.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
            problems.push(format!(
                "{key}: unknown key (the sections are {})",
                SECTIONS.join(", ")
            ));
        }
    }
    problems.extend(errors.iter().map(describe));
    if problems.is_empty() {
        problems.extend(first.clone().into_iter().map(|e| describe(&e)));
    }
    problems.dedup();
    ConfigError::Invalid(problems)
}

/// `cache.ttl: invalid type: ... (from ANNOTATOR__CACHE__TTL)`.
fn describe(e: &figment::Error) -> String {
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    let source = match &e.metadata {
        Some(m) if m.name == ENV_METADATA => format!(
            " (from the environment variable {ENV_PREFIX}{})",
            e.path
                .iter()
                .map(|p| p.to_ascii_uppercase().replace('.', "_"))
                .collect::<Vec<_>>()
                .join("__")
        ),
        Some(m) => m
            .source
            .as_ref()
            .map(|source| format!(" (in {source})"))
            .unwrap_or_default(),
        None => String::new(),
    };
    // A secret's value is never quoted back (`sasl.password = 123456` is a type error).
    let secret = e
        .path
        .iter()
        .any(|p| super::SECRET_KEYS.contains(&p.as_str()))
        || (e.path.first().is_some_and(|p| p == "kafka")
            && e.path.get(1).is_some_and(|p| p == "properties"));
    if secret {
        return format!("{key}: not a valid value (not shown: it may be a secret){source}");
    }
    format!("{key}: {}{source}", e.kind)
}

/// A secret shown as `[REDACTED]` when the config is printed.
pub fn redacted<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[REDACTED]")
}

/// An optional secret: `[REDACTED]` when set, absent when not.
#[allow(clippy::ref_option)]
pub fn redacted_opt<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str("[REDACTED]"),
        None => s.serialize_none(),
    }
}

/// Durations as the operator writes them: read by humantime (`90d`, `500ms`, `1h 30m`),
/// written in one unit (`90d`, not humantime's `2months 29days 2h 52m 48s`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*value))
    }

    /// `90d`, `2h`, `15m`, `30s`, `500ms`.
    pub fn format(value: Duration) -> String {
        let secs = value.as_secs();
        if value.subsec_nanos() != 0 || secs == 0 {
            return format!("{}ms", value.as_millis());
        }
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs.is_multiple_of(size) {
                return format!("{}{unit}", secs / size);
            }
        }
        format!("{secs}s")
    }
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
