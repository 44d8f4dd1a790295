//! The quota budget: how many annotate calls per second this service may spend of the Google
//! project's quota, which it shares with the site's own `assessments.create` calls.
//!
//! - `delivery.rate_limit` with `delivery.rate_burst` is the budget of the whole consumer
//!   group when the cache is Redis ([`redis`]: GCRA in one Lua script), else of this
//!   instance ([`gcra`] locally). `delivery.project_rate_limits` caps single projects inside
//!   it; both are taken in one step, or neither.
//! - Redis unreachable: each instance spends its fair share locally, the budget divided by
//!   the members of the group it last saw (or `delivery.rate_limit_fallback`), and asks Redis
//!   again after [`RETRY_SHARED_AFTER`].
//! - 429s feed back ([`Throttle`]): a project answering 429 gets a lower rate of its own,
//!   cut by a tenth each second with 429s and raised by a fiftieth of its base each second
//!   without, until back at its base.
//! - Order ([`Budget::admit`]): one caller per project at a time takes its turn, waits for an
//!   in-flight slot, then for the token, then calls. A token is never held while the call
//!   cannot go out, and a project waiting for its cap holds at most one slot.

pub mod gcra;
pub mod members;
pub mod redis;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use self::gcra::{Gcra, Rate};
use self::redis::SharedBudget;
use crate::telemetry::Metrics;

/// After a failed Redis budget call, how long the local share is used before Redis is asked
/// again.
pub const RETRY_SHARED_AFTER: Duration = Duration::from_secs(1);

/// A budget call that takes longer is treated as Redis being unreachable. Long, so a slow
/// Redis (or a slow link from one instance) is waited for, not mistaken for a lost one: that
/// instance's fallback share plus the others' shared budget would exceed the budget. Its
/// calls wait meanwhile; only a failed call (refused, reset) falls back at once.
pub const SHARED_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait a budget of `limits` can ask for: `1 / rate + burst / rate` of the
/// slowest. A longer answer from Redis is an error (its clock stepped), not a wait.
fn longest_wait(limits: &[(&str, Rate)]) -> Duration {
    let longest = limits
        .iter()
        .map(|(_, r)| {
            r.interval_us()
                .saturating_mul(u64::from(r.burst.max(1)).saturating_add(1))
        })
        .max()
        .unwrap_or(0);
    Duration::from_micros(longest)
}

/// Most projects with a 429 rate of their own at once.
const MAX_THROTTLED: usize = 1000;

/// A lowered rate with no answers for this long is forgotten when room is needed.
const THROTTLE_STALE_AFTER: Duration = Duration::from_secs(60);

/// How many callers per project ask the budget at once (each holding an in-flight slot):
/// more than one, so a Redis round trip does not bound the rate to one call per round trip.
pub const TURN_WIDTH: usize = 4;

/// A caller told to wait longer than this for budget gives its in-flight slot back meanwhile.
pub const HOLD_SLOT_UP_TO: Duration = Duration::from_millis(20);

/// The operator's settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `delivery.rate_limit`; 0: no budget.
    pub rate: u32,
    /// `delivery.rate_burst`, defaulted.
    pub burst: u32,
    /// `delivery.project_rate_limits`.
    pub project_caps: BTreeMap<String, u32>,
    /// `delivery.rate_limit_fallback`.
    pub fallback: Option<u32>,
    /// Projects named in the config (`recaptcha.project`, `allowed_projects`, the caps): the
    /// `project` label of the budget's metrics; others are `other`.
    pub known_projects: HashSet<String>,
}

impl Settings {
    /// The burst of a cap or rate: a tenth of it, at least 1.
    fn default_burst(rate: u32) -> u32 {
        (rate / 10).max(1)
    }
}

/// A project's own rate after 429s.
struct Throttle {
    /// Of the project's base rate (its cap, else the budget), 0.05..1.
    factor: f64,
    window_start: Instant,
    throttled: u32,
}

/// Where tokens come from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Redis, for the group.
    Shared,
    /// Locally: no Redis (the embedded or memory cache), the budget is this instance's.
    Local,
    /// Locally, Redis unreachable: this instance's share.
    Fallback,
}

pub struct Budget {
    settings: Settings,
    shared: Option<SharedBudget>,
    local: Mutex<Gcra>,
    /// Members of the consumer group last seen (0: never seen).
    members: Arc<AtomicUsize>,
    /// Set while Redis is treated as unreachable: until when.
    shared_down_until: Mutex<Option<Instant>>,
    /// Whether the last Redis budget call failed (for the fallback and recovery lines).
    in_fallback: AtomicBool,
    throttles: Mutex<HashMap<String, Throttle>>,
    /// Turns per limited project (`""`: the rest), [`TURN_WIDTH`] wide, so callers take
    /// tokens in arrival order and a project waiting for its cap holds few in-flight slots.
    turns: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The local GCRA's clock (tokio's, so tests can run it paused).
    started: tokio::time::Instant,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Budget {
    /// `shared`: the Redis budget of the group, when the cache is Redis. `members`: kept up to
    /// date by whoever watches the group.
    pub fn new(
        settings: Settings,
        shared: Option<SharedBudget>,
        members: Arc<AtomicUsize>,
        metrics: Metrics,
    ) -> Self {
        let budget = Self {
            shared_down_until: Mutex::default(),
            in_fallback: AtomicBool::new(false),
            local: Mutex::default(),
            throttles: Mutex::default(),
            turns: Mutex::default(),
            started: tokio::time::Instant::now(),
            settings,
            shared,
            members,
            metrics,
        };
        budget.show_rates();
        budget
    }

    /// A budget that never waits (tests of other parts).
    pub fn unlimited(metrics: Metrics) -> Self {
        Self::new(Settings::default(), None, Arc::default(), metrics)
    }

    fn label<'a>(&self, project: &'a str) -> &'a str {
        if self.settings.known_projects.contains(project) {
            project
        } else {
            "other"
        }
    }

    /// Whether calls of `project` are limited: a budget or its cap. Only then do its 429s
    /// lower a rate of its own (`answered`); otherwise the adaptive in-flight limit alone
    /// answers them.
    pub fn limited(&self, project: &str) -> bool {
        self.settings.rate > 0 || self.settings.project_caps.contains_key(project)
    }

    fn source(&self) -> Source {
        if self.shared.is_none() {
            return Source::Local;
        }
        let mut down = lock(&self.shared_down_until);
        match *down {
            Some(until) if Instant::now() < until => Source::Fallback,
            Some(_) => {
                *down = None;
                Source::Shared
            }
            None => Source::Shared,
        }
    }

    /// This instance's share of the group's budget while Redis is unreachable.
    fn fallback_share(&self) -> f64 {
        let rate = f64::from(self.settings.rate.max(1));
        match self.settings.fallback {
            Some(fallback) => (f64::from(fallback) / rate).min(1.0),
            None => {
                #[allow(clippy::cast_precision_loss)]
                let members = self.members.load(Ordering::Relaxed).max(1) as f64;
                1.0 / members
            }
        }
    }

    /// The limits one call of `project` takes from: the budget, and the project's own rate
    /// (its cap, lowered after 429s) when it has one.
    fn limits(&self, project: &str, source: Source) -> Vec<(String, Rate)> {
        let share = if source == Source::Fallback {
            self.fallback_share()
        } else {
            1.0
        };
        let mut limits = Vec::with_capacity(2);
        let s = &self.settings;
        if s.rate > 0 {
            let budget = Rate {
                per_second: f64::from(s.rate),
                burst: s.burst,
            };
            limits.push(("all".to_owned(), budget.scaled(share)));
        }
        let cap = s.project_caps.get(project).copied();
        let factor = lock(&self.throttles).get(project).map(|t| t.factor);
        let base = cap.or((s.rate > 0).then_some(s.rate));
        if let Some(base) = base
            && (cap.is_some() || factor.is_some())
        {
            let own = Rate {
                per_second: f64::from(base) * factor.unwrap_or(1.0),
                burst: Settings::default_burst(base),
            };
            limits.push((format!("project:{project}"), own.scaled(share)));
        }
        limits
    }

    fn turn(&self, project: &str) -> Arc<Semaphore> {
        let key = if self.settings.project_caps.contains_key(project)
            || lock(&self.throttles).contains_key(project)
        {
            project
        } else {
            ""
        };
        let mut turns = lock(&self.turns);
        if let Some(turn) = turns.get(key) {
            return Arc::clone(turn);
        }
        if turns.len() > MAX_THROTTLED + self.settings.project_caps.len() {
            turns.retain(|_, t| Arc::strong_count(t) > 1);
        }
        Arc::clone(
            turns
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(TURN_WIDTH))),
        )
    }

    /// Waits for an in-flight slot (`acquire`), then for one call of `project` from the
    /// budget; returns the slot. At most [`TURN_WIDTH`] callers per project hold a slot while
    /// they ask, so a token goes out at once, and a caller told to wait longer than
    /// [`HOLD_SLOT_UP_TO`] gives its slot back meanwhile (a project waiting for its cap
    /// does not sit on slots the others could use).
    pub async fn admit<S, F>(&self, project: &str, acquire: impl Fn() -> F) -> S
    where
        F: Future<Output = S>,
    {
        if !self.limited(project) {
            return acquire().await;
        }
        let asked = Instant::now();
        let turn = self.turn(project);
        // The semaphore is never closed.
        let _turn = turn.acquire().await.ok();
        loop {
            let slot = acquire().await;
            loop {
                // Boxed: the Redis call's state would otherwise add to the size of every
                // event task.
                match Box::pin(self.take(project)).await {
                    Ok(()) => {
                        self.metrics.budget_granted(asked.elapsed());
                        return slot;
                    }
                    Err(wait) if wait <= HOLD_SLOT_UP_TO => tokio::time::sleep(wait).await,
                    Err(wait) => {
                        drop(slot);
                        tokio::time::sleep(wait).await;
                        break;
                    }
                }
            }
        }
    }

    /// One call of `project` from its limits, or how long to wait.
    async fn take(&self, project: &str) -> Result<(), Duration> {
        let source = self.source();
        let limits = self.limits(project, source);
        if limits.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&str, Rate)> = limits.iter().map(|(k, r)| (k.as_str(), *r)).collect();
        if let (Some(shared), Source::Shared) = (&self.shared, source) {
            match tokio::time::timeout(SHARED_TIMEOUT, shared.take(&refs)).await {
                Ok(Ok(Err(wait))) if wait > longest_wait(&refs) => self.shared_failed(&format!(
                    "Redis asked to wait {}, longer than the budget ever makes a call wait (its clock stepped?)",
                    humantime::format_duration(wait)
                )),
                Ok(Ok(answer)) => {
                    self.shared_answered();
                    return answer;
                }
                Ok(Err(redis::Unreachable(error))) => self.shared_failed(&error),
                Err(_) => self.shared_failed("no answer in time"),
            }
            // This call falls back too.
            let limits = self.limits(project, Source::Fallback);
            let refs: Vec<(&str, Rate)> = limits.iter().map(|(k, r)| (k.as_str(), *r)).collect();
            return self.take_locally(&refs);
        }
        self.take_locally(&refs)
    }

    fn take_locally(&self, limits: &[(&str, Rate)]) -> Result<(), Duration> {
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.local)
            .take(limits, now)
            .map_err(Duration::from_micros)
    }

    fn shared_answered(&self) {
        if self.in_fallback.swap(false, Ordering::AcqRel) {
            self.metrics.budget_shared_again();
            self.show_rates();
        }
    }

    fn shared_failed(&self, error: &str) {
        *lock(&self.shared_down_until) = Some(Instant::now() + RETRY_SHARED_AFTER);
        if !self.in_fallback.swap(true, Ordering::AcqRel) {
            let share = self.fallback_share() * f64::from(self.settings.rate);
            self.metrics.budget_fallback(error, share);
            self.show_rates();
        }
    }

    /// An answer to a call of `project` (`None`: no answer): 429s lower the project's own
    /// rate; a second without them raises it again.
    pub fn answered(&self, project: &str, status: Option<u16>) {
        let throttled = status == Some(429);
        if throttled {
            self.metrics.throttled(self.label(project));
        }
        let base = self
            .settings
            .project_caps
            .get(project)
            .copied()
            .unwrap_or(self.settings.rate);
        if base == 0 {
            // No budget to lower: the adaptive concurrency alone answers 429s.
            return;
        }
        let changed = {
            let mut throttles = lock(&self.throttles);
            if !throttles.contains_key(project) {
                if !throttled {
                    return;
                }
                if throttles.len() >= MAX_THROTTLED {
                    throttles.retain(|_, t| t.window_start.elapsed() < THROTTLE_STALE_AFTER);
                }
                if throttles.len() >= MAX_THROTTLED {
                    return;
                }
                throttles.insert(
                    project.to_owned(),
                    Throttle {
                        factor: 1.0,
                        window_start: Instant::now(),
                        throttled: 0,
                    },
                );
            }
            let Some(t) = throttles.get_mut(project) else {
                return;
            };
            t.throttled += u32::from(throttled);
            if t.window_start.elapsed() < Duration::from_secs(1) {
                return;
            }
            t.factor = if t.throttled > 0 {
                (t.factor * 0.9).max(0.05)
            } else {
                t.factor + 0.02
            };
            t.window_start = Instant::now();
            t.throttled = 0;
            let factor = t.factor;
            if factor >= 1.0 {
                throttles.remove(project);
            }
            factor.min(1.0)
        };
        self.metrics
            .budget_throttle_changed(self.label(project), f64::from(base) * changed);
        if changed >= 1.0 {
            tracing::info!(
                project,
                "no more 429s: the project's rate is back at its base"
            );
        }
    }

    /// Sets `annotator_rate_effective` for the budget and the capped projects.
    fn show_rates(&self) {
        let share = if self.in_fallback.load(Ordering::Acquire) {
            self.fallback_share()
        } else {
            1.0
        };
        let s = &self.settings;
        self.metrics
            .effective_rate("all", f64::from(s.rate) * share);
        let throttles = lock(&self.throttles);
        for (project, cap) in &s.project_caps {
            let factor = throttles.get(project).map_or(1.0, |t| t.factor);
            self.metrics
                .effective_rate(self.label(project), f64::from(*cap) * factor * share);
        }
    }
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
