//! Bounding what an unauthenticated client can make the service spend.
//!
//! Four tools, all per process (behind a load balancer each replica limits on its own):
//!
//! - [`FailureLimiter`]: a sliding-window counter per key (client IP, user). Callers
//!   **reserve** a slot atomically *before* the expensive work (argon2, TOTP) with
//!   [`FailureLimiter::try_reserve`]; the reservation counts as a failure unless the caller
//!   [forgives](Reservation::forgive) it after a success. So `N` concurrent wrong attempts
//!   cost at most `limit` checks, however they interleave (the old check-then-record
//!   design let 147 of 200 concurrent wrong TOTP codes through to the check).
//! - [`RateLimiter`]: a per-key and a global sliding window over *every* request of a
//!   kind (`/kbs/v0/auth`, challenged sessions), reserved before any work and never
//!   forgiven. Its global limit refuses everyone once reached, so it is used only where
//!   it bounds the database; KBS refusals use a per-client [`FailureLimiter`] alone.
//! - [`BlockingPool`]: a fixed set of threads for argon2 verifications, with a bounded
//!   queue; a request that finds the queue full is refused at once (429) instead of
//!   queueing without bound. Each argon2id verification allocates the hash's `m_cost`
//!   (19 MiB with `Argon2::default()`, the parameters `store/users.rs` hashes with), so
//!   the argon2 memory ceiling is `threads × 19 MiB` (38 MiB with the default 2), and
//!   it stays there: the same threads reuse their allocations.
//! - [`RefusalAggregator`]: after `per_key` audit records per (client, reason) or
//!   `global` records in total within a window, further refusals are counted instead of
//!   written one by one; each window's suppressed count becomes one summary record when
//!   the window rolls over, at a periodic flush, or at shutdown, so the log stays honest
//!   while a flood grows it by a bounded number of rows.
//!
//! Client addresses are limited per IPv4 address and per IPv6 /64 ([`limit_key`]).
//! Every structure bounds its own memory without refusing newcomers: a limiter full of
//! keys evicts its least recently created key (O(1) amortised per request, no scan
//! under the lock); the aggregator folds further clients into one `*` bucket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys a limiter tracks; beyond this the least recently created key is evicted.
const MAX_KEYS: usize = 100_000;

/// The key a client address is limited under: an IPv4 address (or an IPv4-mapped IPv6
/// address) as itself, an IPv6 address as its /64 (`2001:db8:1:2::/64`), since one
/// subscriber or VM usually holds a whole /64 and could otherwise rotate through 2^64
/// "clients". Keys that are not addresses (user ids, `session:…`) are returned as they
/// are. Logs and the audit log keep the full address; only limits use this key.
pub fn limit_key(key: &str) -> std::borrow::Cow<'_, str> {
    match key.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V6(v6)) => {
            let seg = v6.segments();
            let net = Ipv6Addr::new(seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0);
            std::borrow::Cow::Owned(format!("{net}/64"))
        }
        Ok(IpAddr::V4(v4)) => std::borrow::Cow::Owned(v4.to_string()),
        Err(_) => std::borrow::Cow::Borrowed(key),
    }
}

/// The attempts of every key, and the order keys were created in (for eviction).
#[derive(Debug, Default)]
struct Slots {
    map: HashMap<String, VecDeque<Instant>>,
    /// Keys in creation order; may hold keys already removed (skipped when evicting,
    /// and rebuilt from `map` when it grows to twice `map`'s size).
    order: VecDeque<String>,
}

impl Slots {
    /// Makes room for one new key: evicts the least recently created keys until the
    /// map is below `MAX_KEYS`. Amortised O(1) per request: each evicted or skipped key
    /// was pushed once.
    fn make_room(&mut self, max: usize) {
        while self.map.len() >= max {
            match self.order.pop_front() {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
    }

    fn created(&mut self, key: &str) {
        self.order.push_back(key.to_owned());
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

/// A sliding-window counter of reserved attempts per key.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: usize,
    window: Duration,
    max_keys: usize,
    slots: Mutex<Slots>,
}

/// One reserved attempt; it counts against its key until forgiven or aged out.
#[derive(Debug)]
#[must_use = "a reservation counts as a failure unless forgiven"]
pub struct Reservation<'a> {
    limiter: &'a FailureLimiter,
    key: String,
    at: Instant,
}

impl Reservation<'_> {
    /// Releases the slot: the attempt succeeded (or did no expensive work).
    pub fn forgive(self) {
        let mut slots = self.limiter.lock();
        if let Some(q) = slots.map.get_mut(&self.key) {
            if let Some(i) = q.iter().rposition(|t| *t == self.at) {
                q.remove(i);
            }
            if q.is_empty() {
                slots.map.remove(&self.key);
            }
        }
    }
}

impl FailureLimiter {
    /// At most `limit` reserved attempts per key within `window` (`limit` at least 1).
    pub fn new(limit: usize, window: Duration) -> Self {
        Self::with_max_keys(limit, window, MAX_KEYS)
    }

    /// [`FailureLimiter::new`] tracking at most `max_keys` keys (for tests).
    pub fn with_max_keys(limit: usize, window: Duration, max_keys: usize) -> Self {
        Self {
            limit: limit.max(1),
            window,
            max_keys: max_keys.max(1),
            slots: Mutex::new(Slots::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
    }

    /// Reserves one attempt for `key` (IPv6 addresses count per /64, see
    /// [`limit_key`]), or `None` if it already has `limit` attempts in the window.
    /// Check and reservation are one step under one lock. When the limiter tracks
    /// `MAX_KEYS` keys, the least recently created one is evicted to make room (a new
    /// client is never refused because of other clients; an attacker who cycles
    /// through more than `MAX_KEYS` addresses can at worst reset the oldest counters).
    pub fn try_reserve(&self, key: &str) -> Option<Reservation<'_>> {
        let key = limit_key(key).into_owned();
        let now = Instant::now();
        let mut slots = self.lock();
        if !slots.map.contains_key(&key) {
            slots.make_room(self.max_keys);
            slots.created(&key);
        }
        let q = slots.map.entry(key.clone()).or_default();
        Self::prune(q, now, self.window);
        if q.len() >= self.limit {
            return None;
        }
        // Distinct instants make `forgive` remove exactly this reservation.
        let at = match q.back() {
            Some(last) if *last >= now => *last + Duration::from_nanos(1),
            _ => now,
        };
        q.push_back(at);
        Some(Reservation {
            limiter: self,
            key,
            at,
        })
    }

    /// Whether `key` is currently at its limit (no slot would be reserved).
    pub fn blocked(&self, key: &str) -> bool {
        let key = limit_key(key);
        let now = Instant::now();
        let mut slots = self.lock();
        match slots.map.get_mut(key.as_ref()) {
            Some(q) => {
                Self::prune(q, now, self.window);
                q.len() >= self.limit
            }
            None => false,
        }
    }

    /// Records a failure for `key` without a prior reservation.
    pub fn record(&self, key: &str) {
        // Dropping a reservation keeps it counted.
        let _kept = self.try_reserve(key);
    }

    /// How many keys are tracked.
    pub fn keys(&self) -> usize {
        self.lock().map.len()
    }
}

/// Per-key and global limits on requests of one kind within a sliding window.
#[derive(Debug)]
pub struct RateLimiter {
    per_key: FailureLimiter,
    global: FailureLimiter,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Limited {
    /// This client is over its own limit.
    #[error("this client is over its request limit")]
    PerKey,
    /// The service is over its global limit.
    #[error("the service is over its global request limit")]
    Global,
}

impl RateLimiter {
    /// At most `per_key` requests per key and `global` in total within `window`.
    pub fn new(per_key: usize, global: usize, window: Duration) -> Self {
        Self {
            per_key: FailureLimiter::new(per_key, window),
            global: FailureLimiter::new(global, window),
        }
    }

    /// Counts one request of `key`, or refuses it. A request refused by the global
    /// limit does not use up the client's own budget.
    pub fn try_acquire(&self, key: &str) -> Result<(), Limited> {
        let own = self.per_key.try_reserve(key).ok_or(Limited::PerKey)?;
        match self.global.try_reserve("") {
            Some(_counted) => Ok(()),
            None => {
                own.forgive();
                Err(Limited::Global)
            }
        }
    }

    /// Whether `key` is over its own limit right now (does not count a request).
    pub fn blocked(&self, key: &str) -> bool {
        self.per_key.blocked(key)
    }

    /// Which limit, if any, a request of `key` is over right now (does not count it).
    pub fn over(&self, key: &str) -> Option<Limited> {
        if self.per_key.blocked(key) {
            Some(Limited::PerKey)
        } else if self.global.blocked("") {
            Some(Limited::Global)
        } else {
            None
        }
    }
}

/// Makes glibc serve allocations of 1 MiB and more (argon2's working memory) with their
/// own mappings, returned to the system when freed. Without it glibc raises its mmap
/// threshold after the first such free and keeps later blocks cached in per-thread arenas,
/// so memory measured after a burst of argon2 verifications stayed several times the
/// working set. Call once, before the pools start.
pub fn release_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a glibc allocator tunable; it takes plain integers,
    // touches no memory of ours, and is called before the service's threads allocate
    // concurrently (glibc serialises it with the arena locks in any case).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// A fixed set of threads for expensive blocking work (argon2), with a bounded queue.
///
/// Unlike `spawn_blocking` (up to 512 threads), at most `threads` jobs run at once, and
/// always on the same threads, so the memory they allocate (argon2's `m_cost` each) is
/// reused instead of left cached in one malloc arena per short-lived blocking thread.
/// A job that finds `queue` jobs already waiting is refused at once.
#[derive(Debug)]
pub struct BlockingPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl BlockingPool {
    /// Starts `threads` (at least 1) threads named `name`, with room for `queue` waiting
    /// jobs.
    pub fn new(threads: usize, queue: usize, name: &str) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    };
                    // A panicking job must not take a worker with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on the pool; `None` if the queue is full (or `f` panicked).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

/// What to do with one refusal's audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDecision {
    /// Write it as usual.
    Write,
    /// Count it; it will be part of a summary record.
    Suppress,
}

/// The suppressed refusals of one (client, reason) in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalSummary {
    /// The client address (`*` for clients beyond the key limit).
    pub client: String,
    /// The refusal reason.
    pub reason: String,
    /// How many refusals were not written individually.
    pub suppressed: u64,
    /// Seconds the window was open when summarised.
    pub window_secs: u64,
    /// Unix time (seconds) of the first suppressed refusal.
    pub first_unix: i64,
    /// Unix time (seconds) of the last suppressed refusal.
    pub last_unix: i64,
}

#[derive(Debug)]
struct Bucket {
    opened: Instant,
    written: usize,
    suppressed: u64,
    first_unix: i64,
    last_unix: i64,
}

#[derive(Debug, Default)]
struct AggState {
    buckets: HashMap<(String, String), Bucket>,
    global_opened: Option<Instant>,
    global_written: usize,
    /// Summaries of windows that rolled over, waiting for the flusher.
    ready: Vec<RefusalSummary>,
}

/// Turns floods of refusals into counted summary records (see the module docs).
#[derive(Debug)]
pub struct RefusalAggregator {
    per_key: usize,
    global: usize,
    window: Duration,
    max_keys: usize,
    state: Mutex<AggState>,
}

impl RefusalAggregator {
    /// At most `per_key` records per (client, reason) and `global` in total per `window`.
    pub fn new(per_key: usize, global: usize, window: Duration) -> Self {
        Self {
            per_key,
            global,
            window,
            max_keys: 10_000,
            state: Mutex::new(AggState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AggState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn summary(key: &(String, String), b: &Bucket, now: Instant) -> Option<RefusalSummary> {
        (b.suppressed > 0).then(|| RefusalSummary {
            client: key.0.clone(),
            reason: key.1.clone(),
            suppressed: b.suppressed,
            window_secs: now.duration_since(b.opened).as_secs(),
            first_unix: b.first_unix,
            last_unix: b.last_unix,
        })
    }

    /// Decides whether the refusal of `client` for `reason` at Unix time `unix` is
    /// written individually or counted.
    pub fn admit(&self, client: &str, reason: &str, unix: i64) -> AuditDecision {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        if st
            .global_opened
            .is_none_or(|t| now.duration_since(t) >= self.window)
        {
            st.global_opened = Some(now);
            st.global_written = 0;
        }
        let mut key = (client.to_owned(), reason.to_owned());
        if !st.buckets.contains_key(&key) && st.buckets.len() >= self.max_keys {
            // Too many distinct clients: fold the rest into one bucket per reason.
            key.0 = "*".into();
        }
        if let Some(b) = st.buckets.get(&key) {
            if now.duration_since(b.opened) >= self.window {
                if let Some(b) = st.buckets.remove(&key) {
                    if let Some(s) = Self::summary(&key, &b, now) {
                        st.ready.push(s);
                    }
                }
            }
        }
        let b = st.buckets.entry(key).or_insert(Bucket {
            opened: now,
            written: 0,
            suppressed: 0,
            first_unix: unix,
            last_unix: unix,
        });
        if b.written < self.per_key && st.global_written < self.global {
            b.written += 1;
            st.global_written += 1;
            AuditDecision::Write
        } else {
            if b.suppressed == 0 {
                b.first_unix = unix;
            }
            b.suppressed += 1;
            b.last_unix = unix;
            AuditDecision::Suppress
        }
    }

    /// Takes the summaries to write: windows that rolled over, and with `all` (periodic
    /// flush or shutdown) every pending count, so nothing counted is ever lost.
    pub fn drain(&self, all: bool) -> Vec<RefusalSummary> {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        let mut out = std::mem::take(&mut st.ready);
        let window = self.window;
        st.buckets.retain(|key, b| {
            let expired = now.duration_since(b.opened) >= window;
            if expired || all {
                if let Some(s) = Self::summary(key, b, now) {
                    out.push(s);
                }
                b.suppressed = 0;
            }
            !expired
        });
        out
    }

    /// Puts summaries back (their write failed; they are retried at the next flush).
    pub fn restore(&self, summaries: Vec<RefusalSummary>) {
        self.lock().ready.extend(summaries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    #[test]
    fn reservations_are_atomic_and_forgivable() {
        let l = std::sync::Arc::new(FailureLimiter::new(5, Duration::from_secs(60)));
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..50 {
                s.spawn(|| {
                    if let Some(r) = l.try_reserve("k") {
                        granted.fetch_add(1, Ordering::SeqCst);
                        drop(r);
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::SeqCst), 5);
        let l = FailureLimiter::new(1, Duration::from_secs(60));
        let r = l.try_reserve("k").unwrap();
        assert!(l.try_reserve("k").is_none());
        r.forgive();
        assert!(l.try_reserve("k").is_some());
    }

    #[test]
    fn global_limit_spares_the_clients_budget() {
        let r = RateLimiter::new(2, 3, Duration::from_secs(60));
        assert_eq!(r.try_acquire("a"), Ok(()));
        assert_eq!(r.try_acquire("a"), Ok(()));
        assert_eq!(r.try_acquire("a"), Err(Limited::PerKey));
        assert_eq!(r.try_acquire("b"), Ok(()));
        assert_eq!(r.try_acquire("c"), Err(Limited::Global));
        assert!(!r.blocked("c"));
    }

    #[tokio::test]
    async fn blocking_pool_refuses_beyond_its_queue() {
        let pool = std::sync::Arc::new(BlockingPool::new(1, 1, "test").unwrap());
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let p = pool.clone();
        let running = tokio::spawn(async move { p.run(move || wait.recv().is_ok()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(|| 7).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(|| 8).await, None, "one running, one queued: full");
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Some(true));
        assert_eq!(queued.await.unwrap(), Some(7));
        assert_eq!(pool.run(|| 9).await, Some(9));
        assert_eq!(pool.run(|| -> u8 { panic!("job panics") }).await, None);
        assert_eq!(pool.run(|| 10).await, Some(10), "the worker survived");
    }

    #[test]
    fn aggregator_counts_what_it_does_not_write() {
        let a = RefusalAggregator::new(2, 100, Duration::from_secs(3600));
        let writes = (0..10)
            .filter(|i| a.admit("1.2.3.4", "no-session", *i) == AuditDecision::Write)
            .count();
        assert_eq!(writes, 2);
        assert_eq!(a.admit("5.6.7.8", "no-session", 0), AuditDecision::Write);
        let s = a.drain(true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].suppressed, 8);
        assert_eq!((s[0].first_unix, s[0].last_unix), (2, 9));
        assert!(a.drain(true).is_empty(), "counts are drained once");
        // Still in the same window: suppressed, then drained again.
        assert_eq!(
            a.admit("1.2.3.4", "no-session", 10),
            AuditDecision::Suppress
        );
        assert_eq!(a.drain(true)[0].suppressed, 1);
    }

    #[test]
    fn aggregator_global_limit_and_rollover() {
        let a = RefusalAggregator::new(100, 3, Duration::from_millis(30));
        for i in 0..5 {
            let _ = a.admit(&format!("10.0.0.{i}"), "r", 0);
        }
        assert_eq!(a.drain(false), vec![]);
        std::thread::sleep(Duration::from_millis(40));
        let s = a.drain(false);
        assert_eq!(s.iter().map(|s| s.suppressed).sum::<u64>(), 2);
        assert_eq!(a.admit("10.0.0.9", "r", 0), AuditDecision::Write);
    }

    /// Red-team round 2, finding 4: one IPv6 /64 is one client for the limits.
    #[test]
    fn ipv6_is_limited_per_64() {
        let l = FailureLimiter::new(2, Duration::from_secs(60));
        assert!(l.try_reserve("2001:db8:1:2::1").is_some());
        assert!(l.try_reserve("2001:db8:1:2:aaaa::7").is_some());
        assert!(
            l.try_reserve("2001:db8:1:2:ffff:ffff:ffff:fffe").is_none(),
            "a third address of the same /64 is over the limit"
        );
        assert!(l.blocked("2001:db8:1:2::99"));
        assert!(!l.blocked("2001:db8:1:3::1"), "another /64");
        assert!(!l.blocked("10.0.0.1"));
        assert_eq!(limit_key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(limit_key("session:abc"), "session:abc");
    }

    /// Red-team round 2, finding 4: a limiter full of keys evicts the oldest instead of
    /// refusing every new client.
    #[test]
    fn full_limiter_evicts_instead_of_refusing() {
        let l = FailureLimiter::with_max_keys(1, Duration::from_secs(60), 100);
        for i in 0..100 {
            l.record(&format!("10.1.0.{i}"));
        }
        assert_eq!(l.keys(), 100);
        assert!(
            l.try_reserve("10.2.0.1").is_some(),
            "a new client is admitted"
        );
        assert_eq!(l.keys(), 100, "the map does not grow");
        assert!(!l.blocked("10.1.0.0"), "the oldest key was evicted");
        assert!(l.blocked("10.1.0.99"), "recent keys are kept");
        for i in 0..10_000 {
            l.record(&format!("k{i}"));
        }
        assert!(l.keys() <= 100);
    }
}
