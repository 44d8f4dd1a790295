//! Google credentials for tests: throwaway service-account keys (openssl) and configs
//! that use them instead of the API key.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{TestEnv, free_port};

/// A throwaway RSA key pair (openssl): (private PKCS#8 PEM, public PEM).
pub fn rsa_key(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    (
        std::fs::read_to_string(private).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

/// A service-account key file as Google issues them.
pub fn service_account_file(dir: &Path, name: &str, private_pem: &str) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let key = json!({
        "type": "service_account",
        "project_id": "annotator-test",
        "private_key_id": format!("{name}-key-id"),
        "private_key": private_pem,
        "client_email": format!("{name}@annotator-test.iam.gserviceaccount.com"),
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

/// This test's config file without the API key (so Google credentials are used), with
/// `extra` laid over it.
pub fn config_without_key(env: &TestEnv, extra: &str) -> tempfile::NamedTempFile {
    let text = env.config_toml(&format!(
        "{extra}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    ));
    let mut table: toml::Table = text.parse().unwrap();
    table["recaptcha"].as_table_mut().unwrap().remove("api_key");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), table.to_string()).unwrap();
    file
}

/// Environment of a service process that must find only the credentials a test gives it.
pub fn clean_env<'a>(
    home: &'a str,
    extra: &[(&'a str, Option<&'a str>)],
) -> Vec<(&'a str, Option<&'a str>)> {
    let mut vars = vec![
        ("HOME", Some(home)),
        ("GOOGLE_APPLICATION_CREDENTIALS", None),
        ("GCE_METADATA_HOST", None),
        ("GOOGLE_CLOUD_QUOTA_PROJECT", None),
        ("CLOUDSDK_CONFIG", None),
    ];
    vars.extend_from_slice(extra);
    vars
}
