//! The service binary as a process: spawned, signalled, its logs read.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the service binary with a config file.
pub fn spawn_binary(config: &std::path::Path) -> Process {
    spawn_binary_with_env(config, &[])
}

/// A service process that is killed if the test ends (or panics) while it still runs.
pub struct Process(std::process::Child);

impl std::ops::Deref for Process {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the service binary with a config file and extra environment overrides.
pub fn spawn_binary_with_env(config: &std::path::Path, vars: &[(&str, &str)]) -> Process {
    Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
            .args(["run", "--config"])
            .arg(config)
            .envs(vars.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A service process whose stdout and stderr are read as it runs (so a chatty log level
/// cannot fill the pipe and block it).
pub struct Logged {
    child: Process,
    output: Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Logged {
    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the output contains `text`; false after `within`.
    pub async fn wait_for(&self, text: &str, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.output.lock().unwrap().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Sends `sig`, waits for the exit and returns everything it wrote.
    pub fn stop(mut self, sig: &str) -> String {
        signal(&self.child, sig);
        tokio::task::block_in_place(|| {
            self.child.wait().unwrap();
            for reader in self.readers.drain(..) {
                reader.join().unwrap();
            }
        });
        std::mem::take(&mut *self.output.lock().unwrap())
    }
}

/// Runs the service binary with its stdout and stderr captured, logging at `level`.
pub fn spawn_logged(config: &std::path::Path, level: &str) -> Logged {
    spawn_logged_with(config, level, &[])
}

/// [`spawn_logged`] with environment changes: `(name, Some(value))` sets, `(name, None)`
/// removes.
pub fn spawn_logged_with(
    config: &std::path::Path,
    level: &str,
    vars: &[(&str, Option<&str>)],
) -> Logged {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", level);
    for (name, value) in vars {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let mut child = Process(
        command
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let output = Arc::new(std::sync::Mutex::new(String::new()));
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    let readers = pipes
        .into_iter()
        .map(|pipe| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            })
        })
        .collect();
    Logged {
        child,
        output,
        readers,
    }
}

pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs the binary with `args` to its end: (success, stdout then stderr). `vars`:
/// `(name, Some(value))` sets, `(name, None)` removes.
pub fn run_binary(args: &[&str], vars: &[(&str, Option<&str>)]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"));
    command.args(args);
    for (name, value) in vars {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `check --offline` of a config file: (success, output).
pub fn check_offline(config: &std::path::Path, vars: &[(&str, Option<&str>)]) -> (bool, String) {
    run_binary(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        vars,
    )
}

impl super::TestEnv {
    /// The binary on `config` (with `first_vars` in its environment) until `accepted.0` calls
    /// were accepted (within `accepted.1`), then SIGKILL, and again (without them) until every
    /// partition is committed within `within`. Checks that each of the `total` events was
    /// annotated at least once; returns how many calls were repeated.
    pub async fn sigkill_and_restart(
        &self,
        config: &std::path::Path,
        first_vars: &[(&str, &str)],
        accepted: (u64, Duration),
        total: usize,
        within: Duration,
    ) -> usize {
        let mut child = spawn_binary_with_env(config, first_vars);
        self.wait_accepted(accepted.0, accepted.1).await;
        signal(&child, "KILL");
        tokio::task::block_in_place(|| child.wait()).unwrap();
        let mut child = spawn_binary(config);
        self.wait_all_committed(within).await;
        signal(&child, "TERM");
        tokio::task::block_in_place(|| child.wait()).unwrap();
        let recorded = self.sandbox.recorded();
        let names: std::collections::BTreeSet<_> =
            recorded.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names.len(), total, "every event annotated at least once");
        recorded.len() - total
    }
}
