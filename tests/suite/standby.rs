//! More members than partitions (a Deployment scaled past them, or for a moment while KEDA
//! scales): the members left without a partition are ready standbys, so neither a
//! rollout nor `AnnotatorNotReady` trips on them; together they own every partition once.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_beyond_the_partitions_are_ready_standbys() {
    // One partition per topic: four partitions for five members.
    let env = TestEnv::with_partitions("standby", 1).await;
    let mut members = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let mut config = env.config();
        config.admin.listen = format!("127.0.0.1:{port}");
        members.push((env.start(config), port));
    }
    let get = |port: u16, path: &'static str| async move {
        admin_get(&format!("127.0.0.1:{port}"), path).await
    };
    let started = std::time::Instant::now();
    let (ready, owned) = loop {
        let mut ready = 0;
        let mut owned = Vec::new();
        for (_, port) in &members {
            let (status, _) = get(*port, "/readyz").await;
            ready += usize::from(status == 200);
            let (_, metrics) = get(*port, "/metrics").await;
            owned.push(metric(&metrics, "annotator_assigned_partitions", &[]).unwrap_or(-1.0));
        }
        #[allow(clippy::cast_possible_truncation)]
        let total: i64 = owned.iter().map(|o| *o as i64).sum();
        if (ready == 5 && total == 4) || started.elapsed() > Duration::from_secs(60) {
            break (ready, owned);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (member, _) in members {
        member.stop().await;
    }
    assert_eq!(ready, 5, "partitions owned per member: {owned:?}");
    assert!(owned.contains(&0.0), "no standby: {owned:?}");
    assert_eq!(owned.iter().sum::<f64>(), 4.0, "{owned:?}");
}
