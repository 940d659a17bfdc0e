//! Budgets of evidence-driven fetches: evidence chooses what the verifier fetches (an
//! unauthenticated client may invent CHIP_IDs, TCBs and FMSPCs), so cache-miss fetches
//! are counted per client (source IP) and in total per window, and refused beyond
//! either budget ([`super::CollateralError::Budget`], counted in
//! `cvm_collateral_fetch_refusals_total{scope}`). Operator fetches (`collateral
//! export`, the background refresh) are not budgeted.
//!
//! The client is passed down from the KBS flow through a thread-local
//! ([`with_client`]) set on the blocking-pool thread that runs the verification, so
//! the [`super::CollateralSource`] trait keeps its narrow shape.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

thread_local! {
    static CLIENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with `client` (a source IP) as the client whose evidence drives fetches.
pub fn with_client<T>(client: &str, f: impl FnOnce() -> T) -> T {
    let previous = CLIENT.with(|c| c.replace(Some(client.to_owned())));
    let out = f();
    CLIENT.with(|c| *c.borrow_mut() = previous);
    out
}

/// The client set by [`with_client`] on this thread, if any.
pub fn current_client() -> Option<String> {
    CLIENT.with(|c| c.borrow().clone())
}

/// Which budget refused a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client's own budget.
    Client,
    /// The verifier's total budget.
    Global,
}

impl Scope {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Global => "global",
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    global: u32,
    clients: HashMap<String, u32>,
}

/// Fixed-window budgets of cache-miss fetches.
#[derive(Debug)]
pub struct FetchBudget {
    per_client: u32,
    global: u32,
    window: Duration,
    state: Mutex<Window>,
}

/// Clients tracked per window at most (then every further client shares one entry).
const MAX_CLIENTS: usize = 65_536;

impl FetchBudget {
    /// `per_client` and `global` fetches per `window`.
    pub fn new(per_client: u32, global: u32, window: Duration) -> Self {
        Self {
            per_client,
            global,
            window,
            state: Mutex::new(Window {
                start: Instant::now(),
                global: 0,
                clients: HashMap::new(),
            }),
        }
    }

    /// Takes one fetch from `client`'s budget and the global one, or says which is
    /// spent. A fetch without a client (no KBS flow) counts against the global budget
    /// only under the client name `-`.
    pub fn take(&self, client: Option<&str>) -> Result<(), Scope> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.elapsed() >= self.window {
            w.start = Instant::now();
            w.global = 0;
            w.clients.clear();
        }
        let name = client.unwrap_or("-");
        let name = if w.clients.len() >= MAX_CLIENTS && !w.clients.contains_key(name) {
            "(overflow)"
        } else {
            name
        };
        let used = w.clients.get(name).copied().unwrap_or(0);
        if used >= self.per_client {
            return Err(Scope::Client);
        }
        if w.global >= self.global {
            return Err(Scope::Global);
        }
        w.global += 1;
        w.clients.insert(name.to_owned(), used + 1);
        Ok(())
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_then_global() {
        let b = FetchBudget::new(2, 3, Duration::from_secs(60));
        assert!(b.take(Some("a")).is_ok());
        assert!(b.take(Some("a")).is_ok());
        assert_eq!(b.take(Some("a")), Err(Scope::Client));
        assert!(b.take(Some("b")).is_ok());
        assert_eq!(b.take(Some("c")), Err(Scope::Global));
    }

    #[test]
    fn the_thread_local_client_is_scoped() {
        assert_eq!(current_client(), None);
        with_client("10.0.0.1", || {
            assert_eq!(current_client().as_deref(), Some("10.0.0.1"))
        });
        assert_eq!(current_client(), None);
    }
}
