//! Running a program under test: a deadline, and tables of refusals.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The deadline [`assert_refusals`] gives each row: a refusal is quick.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion with its stdout and stderr captured (stdin is left as the
/// command has it). See [`run_timed`].
///
/// # Panics
/// If the program cannot be started, or is still running after `limit`: then it is
/// killed and the panic message shows what it printed up to then.
pub fn run_with_deadline(cmd: &mut Command, limit: Duration) -> Output {
    run_timed(cmd, limit).0
}

/// [`run_with_deadline`], also returning the time from spawn to exit.
///
/// The output pipes are drained while the program runs (a chatty program cannot
/// block on a full pipe), and the deadline holds even if a grandchild keeps a pipe
/// open after the program exits.
pub fn run_timed(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = start + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The readers may still be blocked on a grandchild's copy of the pipe: show
            // what they have collected so far.
            panic!(
                "{cmd:?} did not finish within {limit:?}; it was killed.\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout.0.lock().unwrap()),
                String::from_utf8_lossy(&stderr.0.lock().unwrap()),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let output = Output {
        status,
        stdout: stdout.finish(deadline),
        stderr: stderr.finish(deadline),
    };
    (output, elapsed)
}

/// A pipe being read into a shared buffer by a thread.
struct Drain(Arc<Mutex<Vec<u8>>>, Option<JoinHandle<()>>);

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drain {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let handle = pipe.map(|mut pipe| {
        let buf = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    });
    Drain(buf, handle)
}

impl Drain {
    /// Waits for the end of the stream until `deadline` (a grandchild may hold the pipe),
    /// then returns what was read.
    fn finish(mut self, deadline: Instant) -> Vec<u8> {
        if let Some(h) = self.1.take() {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// One row of a CLI refusal table: running the binary with `args` must exit with
/// `code` and print `stderr` (a substring) to stderr, without a panic.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The arguments (after the program name).
    pub args: &'a [&'a str],
    /// The exit code expected.
    pub code: i32,
    /// A text stderr must contain.
    pub stderr: &'a str,
}

impl<'a> Refusal<'a> {
    /// A row: `args` must exit with `code`, with `stderr` in its standard error.
    pub const fn new(args: &'a [&'a str], code: i32, stderr: &'a str) -> Self {
        Self { args, code, stderr }
    }
}

/// Runs `program` once per row of `table` (no stdin, [`DEFAULT_DEADLINE`] each) and
/// checks every row's exit code and stderr text, and that it did not panic.
///
/// # Panics
/// Listing every row that did not hold (not just the first), with what the program
/// printed.
pub fn assert_refusals(program: impl AsRef<Path>, table: &[Refusal<'_>]) {
    let program = program.as_ref();
    let mut failures = String::new();
    for row in table {
        let out = run_with_deadline(
            Command::new(program).args(row.args).stdin(Stdio::null()),
            DEFAULT_DEADLINE,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        // A refusal is a message, never a panic.
        let panicked = err.contains("panicked at");
        if out.status.code() != Some(row.code) || !err.contains(row.stderr) || panicked {
            let _ = writeln!(
                failures,
                "- {} {:?}: expected exit {} with {:?} in stderr, got {}\n  stderr: {}",
                program.display(),
                row.args,
                row.code,
                row.stderr,
                describe(out.status),
                err.trim_end().replace('\n', "\n          "),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "refusal table rows failed:\n{failures}"
    );
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit {c}"),
        None => format!("{status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_and_status_are_collected() {
        let (o, t) = run_timed(
            &mut sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(30),
        );
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert!(t < Duration::from_secs(30));
    }

    #[test]
    fn a_chatty_program_does_not_block_on_its_pipe() {
        // 1 MiB to stdout: far more than a pipe buffer.
        let o = run_with_deadline(
            &mut sh("head -c 1048576 /dev/zero"),
            Duration::from_secs(30),
        );
        assert!(o.status.success());
        assert_eq!(o.stdout.len(), 1 << 20);
    }

    #[test]
    fn the_deadline_kills_and_shows_the_output() {
        let started = Instant::now();
        let r = std::panic::catch_unwind(|| {
            run_with_deadline(
                &mut sh("echo still-running; exec sleep 30"),
                Duration::from_millis(300),
            )
        });
        let msg = *r
            .expect_err("must fail at the deadline")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("did not finish within"), "{msg}");
        assert!(msg.contains("still-running"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn refusal_rows_check_code_and_text() {
        assert_refusals(
            "sh",
            &[
                Refusal::new(&["-c", "echo 'bad input' >&2; exit 2"], 2, "bad input"),
                Refusal::new(&["-c", "echo refused >&2; exit 1"], 1, "refused"),
            ],
        );
    }

    #[test]
    fn a_panic_is_not_a_refusal() {
        let r = std::panic::catch_unwind(|| {
            assert_refusals(
                "sh",
                &[Refusal::new(
                    &[
                        "-c",
                        "echo \"thread 'main' panicked at src/x.rs: bad\" >&2; exit 2",
                    ],
                    2,
                    "bad",
                )],
            )
        });
        let msg = *r
            .expect_err("a panic fails the row")
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("panicked at"), "{msg}");
    }

    #[test]
    fn every_failing_row_is_reported() {
        let r = std::panic::catch_unwind(|| {
            assert_refusals(
                "sh",
                &[
                    Refusal::new(&["-c", "echo x >&2; exit 1"], 2, "x"),
                    Refusal::new(&["-c", "echo y >&2; exit 1"], 1, "z"),
                    Refusal::new(&["-c", "exit 0"], 0, ""),
                ],
            )
        });
        let msg = *r.expect_err("two rows fail").downcast::<String>().unwrap();
        assert!(
            msg.contains("expected exit 2") && msg.contains("got exit 1"),
            "{msg}"
        );
        assert!(msg.contains("\"z\""), "{msg}");
        assert_eq!(msg.matches("\n- ").count() + 1, 3, "{msg}");
    }
}
