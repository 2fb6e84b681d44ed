//! Progress for long work a person waits on (`bench` and its backlog, `recon run`,
//! `dlq redrive --all`, `migrate`): a bar when the amount of work is known, a spinner with the
//! elapsed time when it is not (one request to the service). Drawn on stderr, and only when
//! stderr is a terminal and the output is not `--json`: a script or a pipe sees nothing extra.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is drawn: on a terminal, never with `--json`.
pub fn shown(json: bool, terminal: bool) -> bool {
    terminal && !json
}

/// A bar or spinner, or nothing (off a terminal, or with `--json`).
pub struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(json: bool, make: impl FnOnce() -> ProgressBar) -> Self {
        Self(shown(json, std::io::stderr().is_terminal()).then(make))
    }

    /// `len` steps of `what` (e.g. "publishing"), with the rate and time left.
    pub fn bar(len: u64, what: &str, json: bool) -> Self {
        Self::new(json, || {
            let bar = ProgressBar::new(len).with_message(what.to_owned());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        })
    }

    /// Work of unknown length: `what` and the time it has taken so far.
    pub fn spinner(what: &str, json: bool) -> Self {
        Self::new(json, || {
            let bar = ProgressBar::new_spinner().with_message(what.to_owned());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    /// Whether anything is drawn.
    pub fn is_drawn(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&self, pos: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Removes the bar, leaving the terminal for the result.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_on_a_terminal_and_never_with_json() {
        assert!(shown(false, true));
        assert!(!shown(true, true));
        assert!(!shown(false, false));
        assert!(!shown(true, false));
        // Under the test runner stderr is a pipe: nothing is drawn, whatever is asked.
        assert!(!std::io::stderr().is_terminal());
        assert!(!Progress::bar(10, "work", false).is_drawn());
        assert!(!Progress::spinner("work", false).is_drawn());
    }
}
