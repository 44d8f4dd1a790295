//! Records the compiler's version for `x-goog-api-client` (`gl-rust/<version>`), as Google's
//! own client libraries send it, and the git revision of the build.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ANNOTATOR_RUSTC_VERSION={version}");
    // The git revision, for `--version` and `annotator_build_info`: ANNOTATOR_REVISION when
    // set (the Dockerfile's build argument: the image is built without .git), else git's.
    let revision = std::env::var("ANNOTATOR_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ANNOTATOR_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=ANNOTATOR_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
