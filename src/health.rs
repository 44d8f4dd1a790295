//! Readiness: what `/readyz` answers, made of the facts the parts report.
//!
//! Not ready: not a member of the consumer group (a member with an empty assignment, when
//! there are more members than partitions, is a ready standby), every Kafka broker unreachable, the cache unreachable, the
//! dead-letter topic refusing writes, or every call halted (credentials, endpoint). Ready but
//! worth saying, listed in the body while the rest flows: projects halted by 403, and
//! partitions stalled by an event that crashed.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What readiness is made of.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicBool,
    cache_down: AtomicBool,
    /// What librdkafka said when every broker went down, while none answers.
    brokers_down: Mutex<Option<String>>,
    /// Why the broker refuses every dead letter, while it does.
    dead_letters_refused: Mutex<Option<String>>,
    /// Why every call is halted, while it is.
    halted: Mutex<Option<String>>,
    /// Partitions (`topic/partition`) whose commit point an event that crashed holds.
    stalled: Mutex<BTreeSet<String>>,
    /// Projects whose calls are halted by 403: why, and since when (ms since the epoch).
    projects: Mutex<std::collections::BTreeMap<String, (String, u64)>>,
}

/// `/readyz`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Why the instance is not ready; empty when it is.
    pub reasons: Vec<String>,
    /// What an operator should know while it is ready.
    pub notes: Vec<String>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.reasons.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Health {
    pub fn set_assigned(&self, yes: bool) {
        self.assigned.store(yes, Ordering::Relaxed);
    }

    pub fn set_cache_down(&self, yes: bool) {
        self.cache_down.store(yes, Ordering::Relaxed);
    }

    /// Every broker unreachable, with librdkafka's reason; `None` once one answers again.
    pub fn set_brokers_down(&self, why: Option<String>) {
        *lock(&self.brokers_down) = why;
    }

    /// The broker refuses dead letters until an operator acts, and why; `None` once one is
    /// written.
    pub fn set_dead_letters_refused(&self, why: Option<String>) {
        *lock(&self.dead_letters_refused) = why;
    }

    /// Every call halted, and why; `None` when calls go out again.
    pub fn set_halted(&self, why: Option<String>) {
        *lock(&self.halted) = why;
    }

    pub fn halted(&self) -> bool {
        lock(&self.halted).is_some()
    }

    /// A project halted by 403 (the others flow), and why; `None` when it answers again.
    pub fn set_project_halted(&self, project: &str, why: Option<String>) {
        let mut projects = lock(&self.projects);
        match why {
            Some(why) => {
                let since = projects
                    .get(project)
                    .map_or_else(unix_ms, |(_, since)| *since);
                projects.insert(project.to_owned(), (why, since));
            }
            None => {
                projects.remove(project);
            }
        }
    }

    /// Why every call is halted, while it is.
    pub fn halted_reason(&self) -> Option<String> {
        lock(&self.halted).clone()
    }

    /// The projects halted by 403: each with why and since when (ms since the epoch).
    pub fn halted_projects(&self) -> Vec<(String, String, u64)> {
        lock(&self.projects)
            .iter()
            .map(|(p, (why, since))| (p.clone(), why.clone(), *since))
            .collect()
    }

    /// A partition whose commit point is held by an event that crashed; returns how many
    /// are stalled now.
    pub fn add_stalled(&self, partition: String) -> usize {
        let mut stalled = lock(&self.stalled);
        stalled.insert(partition);
        stalled.len()
    }

    /// The partition was let go (its next owner starts from the commit point again);
    /// returns how many are stalled now.
    pub fn remove_stalled(&self, partition: &str) -> usize {
        let mut stalled = lock(&self.stalled);
        stalled.remove(partition);
        stalled.len()
    }

    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if !self.assigned.load(Ordering::Relaxed) {
            reasons.push(
                "not a member of the consumer group (joining, or its partitions revoked)"
                    .to_owned(),
            );
        }
        if let Some(why) = lock(&self.brokers_down).as_ref() {
            reasons.push(format!("Kafka brokers unreachable: {why}"));
        }
        if self.cache_down.load(Ordering::Relaxed) {
            reasons.push("cache unreachable".to_owned());
        }
        if let Some(why) = lock(&self.dead_letters_refused).as_ref() {
            reasons.push(format!(
                "dead letters cannot be written (events to dead-letter hold their partitions): {why}"
            ));
        }
        if let Some(why) = lock(&self.halted).as_ref() {
            reasons.push(format!("halted: {why}"));
        }
        let mut notes: Vec<String> = lock(&self.projects)
            .iter()
            .map(|(p, (why, _))| format!("project {p} halted: {why}"))
            .collect();
        notes.extend(lock(&self.stalled).iter().map(|p| {
            format!("partition {p} stalled: an event crashed and holds its commit point (see the log; a restart or rebalance retries it)")
        }));
        Readiness { reasons, notes }
    }
}

/// Now, in milliseconds since the Unix epoch (for "since when" in status pages).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
