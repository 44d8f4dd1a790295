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
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
    }
    dir.join(format!("{ca}.pem"))
}

/// A client certificate (`<cn>.pem`, `<cn>.key`) for `CN=<cn>`, signed by the CA `make_ca`
/// made under `ca_name` (mutual TLS).
pub fn make_client_cert(dir: &Path, ca_name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let ca = format!("{ca_name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{cn}.key"),
            "-out",
            &format!("{cn}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{cn}.ext")),
        "extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{cn}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{cn}.ext"),
            "-out",
            &format!("{cn}.pem"),
        ],
    );
    (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")))
}
