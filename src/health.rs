//! Readiness: what `/readyz` answers, made of the facts the parts report.

use std::sync::atomic::{AtomicBool, Ordering};

/// What readiness is made of.
#[derive(Debug, Default)]
pub struct Health {
    assigned: AtomicBool,
    cache_down: AtomicBool,
    halted: AtomicBool,
}

impl Health {
    pub fn set_assigned(&self, yes: bool) {
        self.assigned.store(yes, Ordering::Relaxed);
    }

    pub fn set_cache_down(&self, yes: bool) {
        self.cache_down.store(yes, Ordering::Relaxed);
    }

    pub fn set_halted(&self, yes: bool) {
        self.halted.store(yes, Ordering::Relaxed);
    }

    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// `Ok` when ready, else every reason why not.
    pub fn readiness(&self) -> Result<(), Vec<&'static str>> {
        let mut reasons = Vec::new();
        if !self.assigned.load(Ordering::Relaxed) {
            reasons.push("not a member of the consumer group with an assignment");
        }
        if self.cache_down.load(Ordering::Relaxed) {
            reasons.push("cache unreachable");
        }
        if self.halted.load(Ordering::Relaxed) {
            reasons.push(
                "halted: the annotate endpoint refuses our credentials (401/403/invalid key)",
            );
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}
