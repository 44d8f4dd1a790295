//! Throwaway certificate authorities and server certificates (openssl) for TLS tests.

use std::path::{Path, PathBuf};

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`) and, when `server`, a certificate it signs for 127.0.0.1.
pub fn make_ca(dir: &Path, name: &str, server: bool) -> PathBuf {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    if server {
        sign(
            dir,
            &ca,
            "/CN=127.0.0.1",
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
    }
    dir.join(format!("{ca}.pem"))
}

/// A client certificate (`<cn>.pem`, `<cn>.key`) for `CN=<cn>`, signed by the CA `make_ca`
/// made under `ca_name` (mutual TLS).
pub fn make_client_cert(dir: &Path, ca_name: &str, cn: &str) -> (PathBuf, PathBuf) {
    sign(
        dir,
        &format!("{ca_name}-ca"),
        &format!("/CN={cn}"),
        cn,
        "extendedKeyUsage=clientAuth\n",
    );
    (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")))
}

/// A key (`<name>.key`) and a certificate (`<name>.pem`) for `subject` with the X.509
/// extensions `ext`, signed by the CA `<ca>.pem`/`<ca>.key`.
fn sign(dir: &Path, ca: &str, subject: &str, name: &str, ext: &str) {
    let (key, csr, extfile, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ],
    );
}
