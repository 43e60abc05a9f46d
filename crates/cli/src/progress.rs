//! Progress of the long steps (building, packaging, uploading, the server's compile): a spinner
//! with the step's latest line on a terminal, plain lines otherwise (CI logs, pipes), always on
//! standard error so that standard output keeps only results.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One step under way.
pub struct Step {
    bar: Option<ProgressBar>,
    what: String,
    started: Instant,
}

impl Step {
    /// Starts a step: `what` is kept beside the spinner, or said once as a line with `detail`
    /// (which a terminal shows as the spinner's message until the step's own output comes).
    pub fn start(what: impl Into<String>, detail: Option<&str>) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
                    .expect("the template is valid"),
            );
            b.set_prefix(what.clone());
            if let Some(d) = detail {
                b.set_message(d.to_owned());
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        if bar.is_none() {
            match detail {
                Some(d) => eprintln!("{what} ({d}) ..."),
                None => eprintln!("{what} ..."),
            }
        }
        Self {
            bar,
            what,
            started: Instant::now(),
        }
    }

    /// A line of the step's own output: beside the spinner on a terminal, passed through
    /// (indented) otherwise.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(b) => b.set_message(line.trim().to_owned()),
            None => eprintln!("  | {line}"),
        }
    }

    /// Ends the step, saying how it went and how long it took.
    pub fn finish(self, outcome: &str) {
        let took = self.started.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!("{} {outcome} ({took:.1} s)", self.what);
    }

    /// Ends the step without a word (its error says what happened).
    pub fn abandon(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A size as people read it.
pub fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}
