//! Rate limiting of failed authentications, per client IP and per user.
//!
//! Only failures are counted: a client or user with `limit` failures inside `window` is
//! refused (429) without checking credentials until the oldest failure ages out. State
//! is per process; behind a load balancer each replica limits independently.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sliding-window failure counter.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    /// At most `limit` failures per key within `window`.
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
    }

    /// Whether `key` is currently blocked.
    pub fn blocked(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(key) {
            Some(q) => {
                Self::prune(q, now, self.window);
                q.len() >= self.limit
            }
            None => false,
        }
    }

    /// Records a failure for `key`.
    pub fn record(&self, key: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a flood of distinct keys: drop entries that aged out.
            let window = self.window;
            map.retain(|_, q| {
                Self::prune(q, now, window);
                !q.is_empty()
            });
        }
        let q = map.entry(key.to_owned()).or_default();
        Self::prune(q, now, self.window);
        q.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_and_recovers() {
        let l = FailureLimiter::new(2, Duration::from_millis(50));
        assert!(!l.blocked("a"));
        l.record("a");
        assert!(!l.blocked("a"));
        l.record("a");
        assert!(l.blocked("a"));
        assert!(!l.blocked("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!l.blocked("a"));
    }
}
