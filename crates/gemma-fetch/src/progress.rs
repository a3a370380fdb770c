//! Progress on stderr: live bars on a terminal, one line per phase otherwise, or nothing.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Silent,
    /// stderr is not a terminal (a log, CI): one line per phase, no redrawing.
    Lines,
    Bars,
}

/// Reports what a pull is doing. Handed to [`ChunkSource`](crate::ChunkSource) implementations so that their
/// slow steps show up too.
pub struct Progress {
    mode: Mode,
    bar: RefCell<Option<ProgressBar>>,
    /// Starts every line, naming the command (`gemma pull`, `gemma-fetch`).
    prefix: &'static str,
}

impl Progress {
    /// Progress on stderr when `enabled`: bars if stderr is a terminal, plain lines if not.
    pub fn stderr(enabled: bool) -> Progress {
        Progress::stderr_as(enabled, "gemma pull")
    }

    /// [`Progress::stderr`] with lines that start with `prefix` instead of `gemma pull`.
    pub fn stderr_as(enabled: bool, prefix: &'static str) -> Progress {
        let mode = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Silent,
            (true, false) => Mode::Lines,
            (true, true) => Mode::Bars,
        };
        Progress { mode, bar: RefCell::new(None), prefix }
    }

    /// No output at all.
    pub fn silent() -> Progress {
        Progress { mode: Mode::Silent, bar: RefCell::new(None), prefix: "" }
    }

    /// Starts a phase of unknown length: its line, then a spinner with the phase's details on a terminal.
    pub fn phase(&self, line: &str) {
        self.note(line);
        if self.mode == Mode::Bars {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            *self.bar.borrow_mut() = Some(bar);
        }
    }

    /// Starts a phase that processes `total` bytes: its line, then a byte bar on a terminal. (The line is printed
    /// apart from the bar so that the bar fits a narrow terminal.)
    pub fn bytes_phase(&self, line: &str, total: u64) {
        self.note(line);
        if self.mode == Mode::Bars {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "[{elapsed}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            *self.bar.borrow_mut() = Some(bar);
        }
    }

    /// Detail for the current phase (for example pip's latest line); shown on a terminal only.
    pub fn detail(&self, text: &str) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_message(text.to_string());
        }
    }

    /// Advances a byte phase.
    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.inc(bytes);
        }
    }

    /// A line that stays (an outcome), after the current bar is cleared.
    pub fn note(&self, line: &str) {
        self.finish();
        if self.mode != Mode::Silent {
            eprintln!("{}: {line}", self.prefix);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
