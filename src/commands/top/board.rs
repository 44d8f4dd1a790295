//! What `top` knows: each member's last status and the rates between its last two, and each
//! partition's recent lag (for its sparkline).

use std::collections::{BTreeMap, VecDeque};

use crate::status::Status;

/// Lag samples kept per partition (a minute at one a second).
const HISTORY: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Members,
    Partitions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By member address, or by topic and partition.
    Name,
    /// The most lag first (members: by their partitions' lag).
    Lag,
}

/// One member as last seen.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub admin: String,
    /// The last status it gave, if any.
    pub last: Option<Status>,
    /// Why the last ask failed, while it fails.
    pub error: Option<String>,
    /// Per second between its last two statuses.
    pub rates: Rates,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub events_in: f64,
    pub annotated: f64,
    pub dead_letters: f64,
    pub granted: f64,
}

#[derive(Debug, Clone)]
pub struct Board {
    pub members: Vec<Member>,
    /// Lag per partition (`topic/partition`), oldest first.
    pub lag: BTreeMap<String, VecDeque<u64>>,
    pub view: View,
    pub sort: Sort,
}

impl Board {
    pub fn new(admins: Vec<String>) -> Self {
        Self {
            members: admins
                .into_iter()
                .map(|admin| Member {
                    admin,
                    ..Member::default()
                })
                .collect(),
            lag: BTreeMap::new(),
            view: View::Members,
            sort: Sort::Name,
        }
    }

    /// Member `i` answered with `status`, or failed.
    pub fn update(&mut self, i: usize, answer: Result<Status, String>) {
        let Some(member) = self.members.get_mut(i) else {
            return;
        };
        match answer {
            Err(why) => member.error = Some(why),
            Ok(now) => {
                if let Some(before) = &member.last {
                    member.rates = rates(before, &now);
                }
                for p in &now.partitions {
                    let history = self
                        .lag
                        .entry(format!("{}/{}", p.topic, p.partition))
                        .or_default();
                    if history.len() == HISTORY {
                        history.pop_front();
                    }
                    history.push_back(u64::try_from(p.lag).unwrap_or_default());
                }
                member.error = None;
                member.last = Some(now);
            }
        }
    }

    pub fn switch_view(&mut self) {
        self.view = match self.view {
            View::Members => View::Partitions,
            View::Partitions => View::Members,
        };
    }

    pub fn next_sort(&mut self) {
        self.sort = match self.sort {
            Sort::Name => Sort::Lag,
            Sort::Lag => Sort::Name,
        };
    }
}

fn rates(before: &Status, now: &Status) -> Rates {
    #[allow(clippy::cast_precision_loss)]
    let seconds = now.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0;
    if seconds <= 0.0 {
        return Rates::default();
    }
    #[allow(clippy::cast_precision_loss)]
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    let dead = |s: &Status| s.dead_letters_total.values().sum::<u64>();
    Rates {
        events_in: per_second(before.events_total, now.events_total),
        annotated: per_second(before.annotated_total, now.annotated_total),
        dead_letters: per_second(dead(before), dead(now)),
        granted: per_second(before.budget.granted_total, now.budget.granted_total),
    }
}
