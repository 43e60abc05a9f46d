//! Keep-alive policies: `fixed` (stop an idle instance after `keep_alive`) and `hybrid`, the
//! hybrid-histogram policy of "Serverless in the Wild" (Shahrad et al., ATC'20).
//!
//! `hybrid` keeps, per function, a histogram of idle times (the time from the end of one
//! invocation to the start of the next) in 1-minute bins over 4 hours. Once it is
//! representative, after each invocation the function's instances are stopped at once and one is
//! pre-warmed at the histogram's 5th percentile (minus a 10% margin) and kept until its 99th
//! (plus 10%). While it is not representative (too few idle times, or most of them beyond 4
//! hours) the policy falls back to the fixed keep-alive.
//!
//! The same code drives the pools and the policy simulator of `petrel sim` (in the CLI), on
//! virtual time.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bins of the idle-time histogram: 1 minute each, 4 hours in all.
pub const BINS: usize = 240;
const BIN: Duration = Duration::from_secs(60);
/// Idle times needed before the histogram is trusted.
const MIN_SAMPLES: u32 = 10;
/// Share of idle times that must fall inside the range for the histogram to be trusted.
const MIN_IN_RANGE: f64 = 0.5;
/// Histograms whose bin counts vary less than this (coefficient of variation) show no pattern
/// (the paper's test), nor do those within twice the CV that chance alone gives their samples.
const MIN_CV: f64 = 2.0;

/// What to do after an invocation ends, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Keep no instance for this long after the end (0: keep the instance right away).
    pub prewarm: Duration,
    /// Then keep one for this long.
    pub keep_alive: Duration,
}

/// The learned idle-time histogram of one function. Serialisable, so it survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleHistogram {
    /// Counts per 1-minute bin (`bins[i]`: idle times in [i, i+1) minutes); empty until the
    /// first idle time, so that a function never invoked costs no 240 counters (most of a
    /// deployment of thousands of functions is idle).
    pub bins: Vec<u32>,
    /// Idle times of 4 hours or more.
    pub out_of_range: u32,
    /// Sum and sum of squares of the bin counts, kept as idle times come (not saved; derived).
    #[serde(skip)]
    sums: Option<(u64, u64)>,
}

impl IdleHistogram {
    pub fn record(&mut self, idle: Duration) {
        if self.bins.len() != BINS {
            self.bins.resize(BINS, 0);
        }
        let (mut sum, mut sq) = self.sums();
        let bin = (idle.as_secs() / BIN.as_secs()) as usize;
        match self.bins.get_mut(bin) {
            Some(c) => {
                sum += 1;
                sq += 2 * *c as u64 + 1;
                *c = c.saturating_add(1);
            }
            None => self.out_of_range = self.out_of_range.saturating_add(1),
        }
        self.sums = Some((sum, sq));
    }

    fn sums(&self) -> (u64, u64) {
        self.sums.unwrap_or_else(|| {
            self.bins.iter().fold((0, 0), |(s, q), &c| {
                (s + c as u64, q + (c as u64) * (c as u64))
            })
        })
    }

    pub fn samples(&self) -> u32 {
        self.bins.iter().sum::<u32>() + self.out_of_range
    }

    /// Whether the histogram shows a pattern worth following.
    pub fn representative(&self) -> bool {
        let (in_range, sq) = self.sums();
        let total = in_range + self.out_of_range as u64;
        if total < MIN_SAMPLES as u64 || (in_range as f64) < MIN_IN_RANGE * total as f64 {
            return false;
        }
        let n = BINS as f64;
        let mean = in_range as f64 / n;
        let var = (sq as f64 / n - mean * mean).max(0.0);
        // A few idle times scattered over 240 bins already give a high CV by chance (about
        // sqrt(bins / samples)): a pattern must stand well clear of that noise too.
        let noise = (n / in_range as f64).sqrt();
        var.sqrt() / mean >= MIN_CV.max(2.0 * noise)
    }

    /// The idle time below which `p` of the in-range idle times fall, at bin granularity:
    /// the lower edge of the bin for the head (pre-warm), the upper edge for the tail.
    fn percentile(&self, p: f64, upper_edge: bool) -> Duration {
        let in_range: u32 = self.bins.iter().sum();
        let want = (p * in_range as f64).ceil().max(1.0) as u32;
        let mut seen = 0;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= want {
                let edge = if upper_edge { i + 1 } else { i };
                return BIN * edge as u32;
            }
        }
        BIN * BINS as u32
    }

    /// The hybrid policy's windows, or `None` while the fixed fallback applies.
    pub fn windows(&self) -> Option<Windows> {
        if !self.representative() {
            return None;
        }
        let head = self.percentile(0.05, false).mul_f64(0.9);
        let tail = self.percentile(0.99, true).mul_f64(1.1);
        Some(Windows {
            prewarm: head,
            keep_alive: tail.saturating_sub(head).max(BIN),
        })
    }
}

/// A manifest's keep-alive policy with its fixed duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Fixed(Duration),
    Hybrid { fallback: Duration },
}

impl Policy {
    /// The windows after an invocation ends, for a function with this histogram.
    pub fn windows(&self, hist: &IdleHistogram) -> Windows {
        match self {
            Policy::Fixed(d) => Windows {
                prewarm: Duration::ZERO,
                keep_alive: *d,
            },
            Policy::Hybrid { fallback } => hist.windows().unwrap_or(Windows {
                prewarm: Duration::ZERO,
                keep_alive: *fallback,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn a_sparse_histogram_falls_back_to_the_fixed_keep_alive() {
        let mut h = IdleHistogram::default();
        for _ in 0..5 {
            h.record(min(30));
        }
        assert_eq!(h.windows(), None, "five samples are not a pattern");
        let p = Policy::Hybrid { fallback: min(10) };
        assert_eq!(p.windows(&h).keep_alive, min(10));
        assert_eq!(p.windows(&h).prewarm, Duration::ZERO);
    }

    #[test]
    fn a_periodic_function_is_prewarmed_just_before_its_next_call() {
        let mut h = IdleHistogram::default();
        for i in 0..40 {
            h.record(min(30) + Duration::from_secs(i % 50));
        }
        let w = h.windows().expect("a clear pattern");
        // 5th percentile: the 30-minute bin's lower edge, minus 10%; 99th: its upper edge + 10%.
        assert_eq!(w.prewarm, min(27));
        assert_eq!(w.prewarm + w.keep_alive, Duration::from_secs(31 * 66));
    }

    #[test]
    fn idle_times_beyond_four_hours_make_it_unrepresentative() {
        let mut h = IdleHistogram::default();
        for _ in 0..20 {
            h.record(min(300));
        }
        for _ in 0..5 {
            h.record(min(2));
        }
        assert_eq!(h.out_of_range, 20);
        assert_eq!(h.windows(), None);
    }
}
