//! Progress for long steps: a live spinner line (phase, elapsed, current
//! step) on a terminal, plain periodic lines otherwise (CI logs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a non-terminal progress line is printed.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Progress {
    phase: String,
    start: Instant,
    bar: Option<ProgressBar>,
    last_plain: Instant,
}

impl Progress {
    pub fn new(phase: &str) -> Self {
        let start = Instant::now();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            let style =
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(phase.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            eprintln!("{phase}: started");
            None
        };
        Progress {
            phase: phase.to_string(),
            start,
            bar,
            last_plain: start,
        }
    }

    /// Updates the current step (e.g. make's current target).
    pub fn step(&mut self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => {
                if self.last_plain.elapsed() >= PLAIN_INTERVAL {
                    self.last_plain = Instant::now();
                    eprintln!(
                        "{}: {} elapsed, {msg}",
                        self.phase,
                        fmt_dur(self.start.elapsed())
                    );
                }
            }
        }
    }

    /// Changes the phase name (e.g. "kernel: configure" → "kernel: build").
    pub fn phase(&mut self, phase: &str) {
        self.phase = phase.to_string();
        match &self.bar {
            Some(bar) => bar.set_prefix(phase.to_string()),
            None => eprintln!("{phase}: {} elapsed", fmt_dur(self.start.elapsed())),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Ends the progress display with a final line.
    pub fn finish(self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}: {msg} ({})", self.phase, fmt_dur(self.start.elapsed()));
    }

    /// Ends the display without a line (the caller reports the error).
    pub fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
