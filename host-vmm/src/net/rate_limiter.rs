//! Token buckets for per-interface rate limits, as Firecracker's rate limiter: the
//! device does not process a queue while its bucket is empty, and a timerfd wakes the
//! device's event thread when tokens are back.
//!
//! A bucket refills continuously at `rate` tokens per second up to `capacity` (the
//! burst: [`BURST`] of the rate, at least one token). An operation passes while the
//! bucket holds at least one token and then takes its whole cost, which may leave the
//! balance negative (a 64 KiB TSO frame through a small bucket): the debt is repaid
//! before the next operation passes. So over any interval `T` at most
//! `capacity + rate·T + (largest cost)` tokens pass, and the average never exceeds the
//! rate.

use std::io;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The burst a bucket allows, as a fraction of one second of its rate (100 ms).
pub const BURST: Duration = Duration::from_millis(100);

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    balance: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (`rate` > 0) and burst [`BURST`].
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = (rate * BURST.as_secs_f64()).max(1.0);
        Self {
            rate,
            capacity,
            balance: capacity,
            last: now,
        }
    }

    /// The burst size in tokens.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.balance = (self.balance + dt * self.rate).min(self.capacity);
    }

    /// How long until an operation may pass (zero: now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.balance >= 1.0 {
            Duration::ZERO
        } else {
            // Until one token is back (plus a little, so the timer never fires just
            // short of it).
            Duration::from_secs_f64((1.0 - self.balance) / self.rate).max(Duration::from_micros(50))
                + Duration::from_micros(10)
        }
    }

    /// Takes `cost` tokens (call only when [`TokenBucket::wait`] returned zero).
    pub fn take(&mut self, cost: u64) {
        self.balance -= cost as f64;
    }
}

/// The limits of one direction of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second.
    pub bytes: Option<u64>,
    /// Packets per second.
    pub packets: Option<u64>,
}

impl RateLimit {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.packets.is_none()
    }
}

/// One direction's buckets and the timer that ends a throttle.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    packets: Option<TokenBucket>,
    timer: Option<TimerFd>,
    armed: bool,
    throttled: u64,
}

impl RateLimiter {
    /// A limiter for `limit` (no timer is created when it is unlimited).
    pub fn new(limit: RateLimit) -> io::Result<Self> {
        let now = Instant::now();
        Ok(Self {
            bytes: limit.bytes.map(|r| TokenBucket::new(r, now)),
            packets: limit.packets.map(|r| TokenBucket::new(r, now)),
            timer: if limit.is_unlimited() {
                None
            } else {
                Some(TimerFd::new()?)
            },
            armed: false,
            throttled: 0,
        })
    }

    /// The timer's descriptor, to register with the event loop.
    pub fn timer_fd(&self) -> Option<i32> {
        self.timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether the limiter waits for its timer.
    pub fn is_blocked(&self) -> bool {
        self.armed
    }

    /// How many times an operation had to wait.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// Lets an operation of `bytes` bytes and `packets` packets pass and charges it, or
    /// arms the timer and returns false.
    pub fn consume(&mut self, bytes: u64, packets: u64) -> bool {
        if self.armed {
            return false;
        }
        let now = Instant::now();
        let wait = [self.bytes.as_mut(), self.packets.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| b.wait(now))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            if let Some(b) = &mut self.bytes {
                b.take(bytes);
            }
            if let Some(b) = &mut self.packets {
                b.take(packets);
            }
            return true;
        }
        self.throttled += 1;
        if let Some(t) = &mut self.timer {
            match t.reset(wait, None) {
                Ok(()) => self.armed = true,
                Err(e) => tracing::warn!(error = %e, "cannot arm the rate limiter's timer"),
            }
        }
        false
    }

    /// The timer fired: reads it and unblocks.
    pub fn timer_event(&mut self) {
        if let Some(t) = &mut self.timer {
            // Ready per epoll, so this does not block.
            let _ = t.wait();
        }
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.capacity(), 100.0, "100 ms of the rate");
        assert_eq!(b.wait(t0), Duration::ZERO);
        b.take(100);
        // Empty: 1 token takes 1 ms.
        let w = b.wait(t0);
        assert!(
            w >= Duration::from_micros(900) && w <= Duration::from_millis(2),
            "{w:?}"
        );
        // After 50 ms, 50 tokens; after 10 s, still only the burst.
        assert_eq!(b.wait(t0 + Duration::from_millis(50)), Duration::ZERO);
        b.take(50);
        assert!(!b.wait(t0 + Duration::from_millis(50)).is_zero());
        assert_eq!(b.wait(t0 + Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(b.balance, 100.0);
    }

    #[test]
    fn an_oversized_cost_is_debt_repaid_before_the_next_operation() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.take(1100); // balance -1000: one second of debt
        let w = b.wait(t0);
        assert!(
            w >= Duration::from_millis(1000) && w < Duration::from_millis(1010),
            "{w:?}"
        );
        assert!(!b.wait(t0 + Duration::from_millis(999)).is_zero());
        assert!(b.wait(t0 + Duration::from_millis(1002)).is_zero());
    }

    #[test]
    fn the_average_over_a_long_run_stays_at_the_rate() {
        // Simulated clock: 1500-byte operations against 1 MB/s for 10 s.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0);
        let mut now = t0;
        let mut passed = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let w = b.wait(now);
            if w.is_zero() {
                b.take(1500);
                passed += 1500;
            } else {
                now += w;
            }
        }
        let bound = 1_000_000 * 10 + 100_000 + 1500;
        assert!(passed <= bound, "{passed} > {bound}");
        assert!(
            passed >= 9_900_000,
            "{passed}: the limiter starved the flow"
        );
    }

    #[test]
    fn a_limiter_checks_both_buckets_and_arms_its_timer() {
        let mut l = RateLimiter::new(RateLimit {
            bytes: Some(1_000_000),
            packets: Some(10),
        })
        .unwrap();
        assert!(l.timer_fd().is_some());
        // One packet of burst (10 pps * 100 ms).
        assert!(l.consume(100, 1));
        assert!(!l.consume(100, 1), "the packet bucket is empty");
        assert!(l.is_blocked());
        assert_eq!(l.throttled(), 1);
        // The timer fires after ~100 ms.
        let mut fds = [libc::pollfd {
            fd: l.timer_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1, "the timer fired");
        l.timer_event();
        assert!(!l.is_blocked());
        assert!(l.consume(100, 1));
        let unlimited = RateLimiter::new(RateLimit::default()).unwrap();
        assert!(unlimited.timer_fd().is_none());
    }
}
