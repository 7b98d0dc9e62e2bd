//! Progress reporting shared by every stage.
//!
//! Libraries take a `&dyn Progress` and report work done; they never draw.
//! Binaries pass a [`Terminal`], which draws a bar when standard error is a
//! terminal and prints plain, sparse lines when it is not (CI logs, pipes).

mod memory;

pub use memory::{parse_peak, peak_resident_kib, report_peak, PEAK_PREFIX};

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Receives progress from a long-running library call. Must be cheap and
/// callable from many threads.
pub trait Progress: Sync {
    /// A new phase of `total` units (images, batches) begins.
    fn start(&self, phase: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Discards all progress: for tests and library callers that want silence.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// A progress bar on a terminal, plain lines every 10% elsewhere.
pub struct Terminal {
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    phase: String,
    total: u64,
    done: u64,
    next_line_at: u64,
    started: Instant,
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Terminal {
    pub fn new() -> Self {
        Terminal {
            state: Mutex::new(State {
                bar: None,
                phase: String::new(),
                total: 0,
                done: 0,
                next_line_at: 0,
                started: Instant::now(),
            }),
        }
    }
}

fn step(total: u64) -> u64 {
    (total / 10).max(1)
}

impl Progress for Terminal {
    fn start(&self, phase: &str, total: u64) {
        let mut s = self.state.lock().unwrap();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        s.phase = phase.to_string();
        s.total = total;
        s.done = 0;
        s.next_line_at = step(total);
        s.started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(phase.to_string());
            s.bar = Some(bar);
        } else {
            eprintln!("{phase}: 0/{total}");
        }
    }

    fn advance(&self, n: u64) {
        let mut s = self.state.lock().unwrap();
        s.done += n;
        if let Some(bar) = &s.bar {
            bar.inc(n);
        } else if s.done >= s.next_line_at && s.done < s.total {
            s.next_line_at = s.done + step(s.total);
            eprintln!("{}: {}/{}", s.phase, s.done, s.total);
        }
    }

    fn finish(&self) {
        let mut s = self.state.lock().unwrap();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        if s.total > 0 {
            let secs = s.started.elapsed().as_secs_f64();
            eprintln!("{}: {}/{} in {:.1} s", s.phase, s.done, s.total, secs);
        }
        s.total = 0;
    }
}
