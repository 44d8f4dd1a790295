//! `recaptcha-annotator top` end to end under tmux: against a running service and the
//! sandbox, the screen shows the member ready with its flow, `tab` shows the partitions,
//! a member that goes away is shown unreachable while the view goes on, and `q` quits.

use std::time::Duration;

use crate::common::*;

/// A tmux server of this test's own (`-L`), 80x24.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (Debian's package)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen holds every one of `wanted`.
    async fn wait_for(&self, wanted: &[&str]) -> String {
        let started = std::time::Instant::now();
        loop {
            let screen = self.screen();
            if wanted.iter().all(|w| screen.contains(w)) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the screen never showed {wanted:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_members_and_partitions_and_survives_one_going_away() {
    let env = TestEnv::with_partitions("top", 1).await;
    env.produce_bulk(unique_events("top", 20)).await;
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    // A second member address that answers nothing once the first screen is up.
    let gone = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", gone)).unwrap();
    drop(listener);
    let admin = format!("127.0.0.1:{}", env.admin_port);
    let tmux = Tmux {
        socket: format!("annotator-top-{}", std::process::id()),
    };
    let command = format!(
        "{} top --admin {admin} --admin 127.0.0.1:{gone}",
        env!("CARGO_BIN_EXE_recaptcha-annotator")
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = tmux
        .wait_for(&["2 members, 1 answer, 1 ready", &admin, "unreach."])
        .await;
    assert!(screen.contains("ready"), "{screen}");
    tmux.run(&["send-keys", "-t", "top", "Tab"]);
    let screen = tmux
        .wait_for(&["partitions by name", "fraud-signals/0"])
        .await;
    assert!(screen.contains("committed/end"), "{screen}");
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let started = std::time::Instant::now();
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "q did not quit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;
}
