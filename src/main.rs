use std::process::ExitCode;

/// mimalloc: the service allocates and frees small objects for every event on two or more
/// threads (the message copy, the request, hyper's and h2's frames); glibc's malloc spent
/// about a sixth of the service's CPU on it (see docs/CAPACITY.md for the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    recaptcha_annotator::cli::main().await
}
