//! Progress of long work (multi-GB `cvm image disk --from-dir`, `cvm emulated init`).
//!
//! Nothing is shown for work that ends within [`QUIET_FOR`]. After that: on a terminal,
//! one self-overwriting line on standard error; otherwise an INFO log line every
//! [`LOG_EVERY`]. Standard output (where `--output json` goes) is never touched.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Work shorter than this shows no progress.
pub const QUIET_FOR: Duration = Duration::from_secs(2);
/// How often a non-terminal gets an INFO line.
pub const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often the terminal line is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// A progress reporter for one piece of work.
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    tty: bool,
}

/// What the counts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes (shown in MiB).
    Bytes,
    /// Steps.
    Steps,
}

impl Progress {
    /// Starts reporting `what` (e.g. "encrypting disk.img"), out of `total` if known.
    pub fn new(what: impl Into<String>, unit: Unit, total: Option<u64>) -> Self {
        Self {
            what: what.into(),
            unit,
            total,
            done: 0,
            started: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Records `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        let now = Instant::now();
        if now.duration_since(self.started) < QUIET_FOR {
            return;
        }
        let every = if self.tty { REDRAW_EVERY } else { LOG_EVERY };
        if self.last.is_some_and(|t| now.duration_since(t) < every) {
            return;
        }
        self.last = Some(now);
        self.show();
    }

    /// The text of the current state, e.g. `encrypting: 512/2048 MiB (25%), 3 s`.
    pub fn line(&self) -> String {
        let f = |v: u64| match self.unit {
            Unit::Bytes => format!("{}", v >> 20),
            Unit::Steps => v.to_string(),
        };
        let unit = match self.unit {
            Unit::Bytes => " MiB",
            Unit::Steps => "",
        };
        let secs = self.started.elapsed().as_secs();
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {}/{}{unit} ({}%), {secs} s",
                self.what,
                f(self.done),
                f(t),
                self.done.saturating_mul(100) / t
            ),
            _ => format!("{}: {}{unit}, {secs} s", self.what, f(self.done)),
        }
    }

    fn show(&self) {
        if self.tty {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{}", self.line());
            let _ = e.flush();
        } else {
            tracing::info!(event = "progress", done = self.done, total = ?self.total, "{}", self.line());
        }
    }

    /// Ends the report (clears the terminal line if one was drawn).
    pub fn finish(self) {
        if self.tty && self.last.is_some() {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

/// Runs `work`, showing `what` and the elapsed time while it runs longer than
/// [`QUIET_FOR`] (for steps that report no counts, like key generation or `mkfs`).
pub fn ticking<T>(what: &str, work: impl FnOnce() -> T) -> T {
    use std::sync::{Arc, Condvar, Mutex};
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let tty = std::io::stderr().is_terminal();
    let watcher = {
        let done = Arc::clone(&done);
        let what = what.to_owned();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (lock, cv) = &*done;
            let mut wait = QUIET_FOR;
            let mut drawn = false;
            let Ok(mut finished) = lock.lock() else {
                return;
            };
            loop {
                // The work may have ended before this thread first took the lock.
                if *finished {
                    break;
                }
                let Ok((g, _)) = cv.wait_timeout(finished, wait) else {
                    return;
                };
                finished = g;
                if *finished {
                    break;
                }
                let line = format!("{what}: {} s", started.elapsed().as_secs());
                if tty {
                    let mut e = std::io::stderr().lock();
                    let _ = write!(e, "\r\x1b[2K{line}");
                    let _ = e.flush();
                    drawn = true;
                    wait = Duration::from_secs(1);
                } else {
                    tracing::info!(event = "progress", "{line}");
                    wait = LOG_EVERY;
                }
            }
            if drawn {
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r\x1b[2K");
                let _ = e.flush();
            }
        })
    };
    let r = work();
    let (lock, cv) = &*done;
    if let Ok(mut g) = lock.lock() {
        *g = true;
    }
    cv.notify_all();
    let _ = watcher.join();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_counts_and_percent() {
        let mut p = Progress::new("encrypting", Unit::Bytes, Some(2048 << 20));
        p.advance(512 << 20);
        assert!(
            p.line().starts_with("encrypting: 512/2048 MiB (25%)"),
            "{}",
            p.line()
        );
        let mut s = Progress::new("keys", Unit::Steps, None);
        s.advance(3);
        assert!(s.line().starts_with("keys: 3, "), "{}", s.line());
        // Quick work shows nothing (and so never drew a line).
        assert!(s.last.is_none());
    }

    #[test]
    fn after_the_quiet_period_a_log_line_at_most_every_interval() {
        let mut p = Progress::new("x", Unit::Steps, Some(10));
        p.tty = false;
        p.advance(1);
        assert!(p.last.is_none(), "quiet during the first 2 s");
        let Some(past) = Instant::now().checked_sub(QUIET_FOR + Duration::from_millis(10)) else {
            return; // the machine booted less than 2 s ago
        };
        p.started = past;
        p.advance(1);
        let first = p.last.expect("shown after the quiet period");
        p.advance(1);
        assert_eq!(p.last, Some(first), "not again within LOG_EVERY");
    }

    #[test]
    fn ticking_returns_the_work_result_and_stops_its_watcher() {
        let t = Instant::now();
        assert_eq!(ticking("quick", || 7), 7);
        assert!(
            t.elapsed() < QUIET_FOR,
            "the watcher is woken, not waited for"
        );
    }
}
