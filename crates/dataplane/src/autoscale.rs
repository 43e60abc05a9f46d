//! Concurrency-following scale decisions, after Knative's KPA: the pool's observed concurrency
//! (requests in flight plus waiting) is kept as the peak of each second; its average over a
//! 60-second stable window says how many instances to keep, its average over a 6-second panic
//! window says how many to start now. When the panic window asks for at least twice the live
//! instances, the pool panics for a stable window: it scales up to the panic figure and does not
//! scale down.
//!
//! The pool still starts an instance for a request that finds no free slot, so a burst never
//! waits for a tick; these decisions add instances ahead of demand (for functions with
//! `concurrency > 1`, before their slots run out) and keep them through short lulls.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub const STABLE_WINDOW: Duration = Duration::from_secs(60);
pub const PANIC_WINDOW: Duration = Duration::from_secs(6);
/// The share of an instance's concurrency the autoscaler aims to use.
pub const TARGET_UTILISATION: f64 = 0.7;
/// Panic when the panic window wants this many times the live instances.
pub const PANIC_THRESHOLD: f64 = 2.0;
const BUCKET: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Autoscaler {
    /// (start of the second, peak concurrency seen in it)
    buckets: VecDeque<(Instant, f64)>,
    panic_until: Option<Instant>,
}

impl Autoscaler {
    /// Notes the pool's concurrency (in flight plus waiting) at `now`.
    pub fn observe(&mut self, now: Instant, concurrency: f64) {
        match self.buckets.back_mut() {
            Some((start, peak)) if now.duration_since(*start) < BUCKET => {
                *peak = peak.max(concurrency)
            }
            _ => self.buckets.push_back((now, concurrency)),
        }
        while let Some((start, _)) = self.buckets.front() {
            if now.duration_since(*start) > STABLE_WINDOW {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn average(&self, now: Instant, window: Duration) -> f64 {
        let xs: Vec<f64> = self
            .buckets
            .iter()
            .filter(|(start, _)| now.duration_since(*start) <= window)
            .map(|(_, c)| *c)
            .collect();
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    }

    /// How many instances the pool should have now, given `live` of them, each taking
    /// `concurrency` requests, at most `max`.
    pub fn desired(&mut self, now: Instant, live: usize, concurrency: u32, max: usize) -> usize {
        let per = (concurrency as f64 * TARGET_UTILISATION).max(1.0);
        let stable = (self.average(now, STABLE_WINDOW) / per).ceil() as usize;
        let panic = (self.average(now, PANIC_WINDOW) / per).ceil() as usize;
        if panic as f64 >= PANIC_THRESHOLD * live.max(1) as f64 && panic > live {
            self.panic_until = Some(now + STABLE_WINDOW);
        }
        let want = match self.panic_until {
            Some(until) if now < until => panic.max(live),
            _ => {
                self.panic_until = None;
                stable
            }
        };
        want.min(max)
    }

    pub fn panicking(&self, now: Instant) -> bool {
        self.panic_until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_panics_and_scales_to_the_panic_window_at_once() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        for s in 0..30 {
            a.observe(t0 + Duration::from_secs(s), 1.0);
        }
        let t = t0 + Duration::from_secs(30);
        assert_eq!(a.desired(t, 1, 1, 100), 1, "steady at one");
        // 40 concurrent requests for two seconds.
        a.observe(t + Duration::from_secs(1), 40.0);
        a.observe(t + Duration::from_secs(2), 40.0);
        let now = t + Duration::from_secs(2);
        let want = a.desired(now, 1, 1, 100);
        assert!(a.panicking(now));
        // Panic window: 6 one-second buckets: four at 1, two at 40: (4 + 80) / 6 = 14.
        assert_eq!(want, 14);
        assert_eq!(a.desired(now, 1, 1, 10), 10, "never above max_instances");
    }

    #[test]
    fn while_panicking_it_does_not_scale_down_and_afterwards_follows_the_stable_window() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        a.observe(t0, 20.0);
        assert_eq!(a.desired(t0, 1, 1, 100), 20);
        // Load drops to nothing; live instances stay while the panic lasts.
        for s in 1..50 {
            a.observe(t0 + Duration::from_secs(s), 0.0);
        }
        let t = t0 + Duration::from_secs(50);
        assert!(a.panicking(t));
        assert_eq!(a.desired(t, 20, 1, 100), 20);
        for s in 50..130 {
            a.observe(t0 + Duration::from_secs(s), 0.0);
        }
        let later = t0 + Duration::from_secs(130);
        assert_eq!(
            a.desired(later, 20, 1, 100),
            0,
            "the stable window is empty now"
        );
    }

    #[test]
    fn concurrency_per_instance_is_used_at_seventy_percent() {
        let mut a = Autoscaler::default();
        let t0 = Instant::now();
        for s in 0..60 {
            a.observe(t0 + Duration::from_secs(s), 14.0);
        }
        // 14 in flight, 10 per instance at 70%: 2 instances.
        assert_eq!(a.desired(t0 + Duration::from_secs(59), 2, 10, 100), 2);
    }
}
