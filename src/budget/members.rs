//! How many members the consumer group has: what the fallback share divides the budget by.
//! Read from the broker's group metadata (librdkafka's `ListGroups` + `DescribeGroups`);
//! where the broker does not answer them (a principal without DESCRIBE on the group, a
//! broker that lists no groups), estimated from the share of the consumed partitions this
//! instance owns.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

use crate::kafka::QUERY_TIMEOUT;

/// How often the group is looked at.
pub const READ_EVERY: Duration = Duration::from_secs(10);

/// The members of `group`, or an estimate: the consumed partitions over the ones owned here.
fn read(
    client: &crate::kafka::Reader,
    group: &str,
    topics: &[String],
    owned: usize,
) -> Option<usize> {
    if let Ok(groups) = client.fetch_group_list(Some(group), QUERY_TIMEOUT)
        && let Some(found) = groups.groups().iter().find(|g| g.name() == group)
        && !found.members().is_empty()
    {
        return Some(found.members().len());
    }
    if owned == 0 {
        return None;
    }
    let mut total = 0;
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), QUERY_TIMEOUT).ok()?;
        total += metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
    }
    Some(total.div_ceil(owned).max(1))
}

/// Keeps `members` at the group's last known size until `stop`; `owned` counts the
/// partitions this instance owns now.
pub async fn watch(
    client: Arc<crate::kafka::Reader>,
    group: String,
    topics: Vec<String>,
    owned: impl Fn() -> usize + Send + 'static,
    members: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let owned = owned();
        let (client, group, topics) = (Arc::clone(&client), group.clone(), topics.clone());
        let read = tokio::task::spawn_blocking(move || read(&client, &group, &topics, owned));
        if let Ok(Some(n)) = read.await
            && members.swap(n, Ordering::Relaxed) != n
        {
            tracing::debug!(members = n, "consumer group size");
        }
        // Soon again while not known yet (before the first assignment).
        let next = if members.load(Ordering::Relaxed) == 0 {
            Duration::from_secs(1)
        } else {
            READ_EVERY
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = stop.cancelled() => return,
        }
    }
}
