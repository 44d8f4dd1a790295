use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    recaptcha_annotator::cli::main().await
}
