//! Rate limits and namespace quotas at admission: a function's `rate_limit` (a token bucket),
//! a namespace's `max_rps` (another) and `max_concurrency` (a semaphore). A caller that waits
//! for its answer is refused at once (`429 too_many_requests` with `Retry-After`, naming the
//! limit); async attempts and trigger batches wait for their turn instead, so a limit slows
//! them and loses nothing.
//!
//! The limits hold per server: several servers on one store each allow the full rate.

use petrel_core::api::Trigger;
use petrel_core::manifest::RateLimit;
use petrel_core::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(per_second: f64, burst: u32) -> Self {
        Self {
            // A rate of zero would never refill (and divide by zero): at least one a minute.
            rate: per_second.max(1.0 / 60.0),
            burst: burst.max(1) as f64,
            state: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        let (tokens, last) = *s;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// A namespace's invocation limits (its `max_rps` and `max_concurrency` quotas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceLimits {
    pub max_rps: Option<u32>,
    pub max_concurrency: Option<u32>,
}

#[derive(Debug)]
struct NsState {
    limits: NamespaceLimits,
    rps: Option<Bucket>,
    running: Option<Arc<Semaphore>>,
}

/// What admission holds while an invocation runs.
#[derive(Debug)]
pub(crate) struct Admitted {
    _running: Option<OwnedSemaphorePermit>,
}

type FunctionBucket = (RateLimit, Arc<Bucket>);

#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Each function's bucket, with the limit it was made for.
    functions: Mutex<HashMap<(String, String), FunctionBucket>>,
    namespaces: RwLock<HashMap<String, Arc<NsState>>>,
}

/// Whether an invocation of this kind waits for its turn rather than being refused.
fn waits(kind: Trigger) -> bool {
    !matches!(
        kind,
        Trigger::Http | Trigger::Invoke | Trigger::LambdaInvoke
    )
}

fn refused(message: String, wait: Duration) -> ApiError {
    ApiError::new(ErrorCode::TooManyRequests, message)
        .with_retry_after(wait.as_secs_f64().ceil().max(1.0) as u64)
}

impl Admission {
    /// Sets (or with the default, removes) a namespace's limits.
    pub(crate) fn set_namespace(&self, ns: &str, limits: NamespaceLimits) {
        let mut all = self.namespaces.write().unwrap();
        if limits == NamespaceLimits::default() {
            all.remove(ns);
            return;
        }
        if all.get(ns).is_some_and(|s| s.limits == limits) {
            return;
        }
        all.insert(
            ns.to_owned(),
            Arc::new(NsState {
                limits,
                rps: limits.max_rps.map(|r| Bucket::new(r as f64, r.max(1))),
                running: limits
                    .max_concurrency
                    .map(|c| Arc::new(Semaphore::new(c as usize))),
            }),
        );
    }

    fn function_bucket(&self, ns: &str, name: &str, limit: RateLimit) -> Arc<Bucket> {
        let mut all = self.functions.lock().unwrap();
        let key = (ns.to_owned(), name.to_owned());
        match all.get(&key) {
            Some((l, b)) if *l == limit => b.clone(),
            _ => {
                let b = Arc::new(Bucket::new(limit.per_second(), limit.burst));
                all.insert(key, (limit, b.clone()));
                b
            }
        }
    }

    /// Lets an invocation of `name` (whose version has `limit`) in, refusing or delaying it
    /// as its kind says.
    pub(crate) async fn admit(
        &self,
        ns: &str,
        name: &str,
        limit: Option<RateLimit>,
        kind: Trigger,
    ) -> Result<Admitted, ApiError> {
        let wait = waits(kind);
        if let Some(limit) = limit {
            let bucket = self.function_bucket(ns, name, limit);
            loop {
                match bucket.take() {
                    Ok(()) => break,
                    Err(d) if wait => tokio::time::sleep(d).await,
                    Err(d) => {
                        return Err(refused(
                            format!("function {name} takes at most {limit} (its rate_limit, burst {}); retry after the Retry-After seconds, or raise rate_limit", limit.burst),
                            d,
                        ))
                    }
                }
            }
        }
        let state = self.namespaces.read().unwrap().get(ns).cloned();
        let Some(state) = state else {
            return Ok(Admitted { _running: None });
        };
        if let Some(bucket) = &state.rps {
            loop {
                match bucket.take() {
                    Ok(()) => break,
                    Err(d) if wait => tokio::time::sleep(d).await,
                    Err(d) => {
                        return Err(refused(
                            format!(
                                "namespace {ns} takes at most {}/s invocations (its max_rps quota); retry after the Retry-After seconds, or ask the cluster's owner for a higher quota",
                                state.limits.max_rps.unwrap_or_default()
                            ),
                            d,
                        ))
                    }
                }
            }
        }
        let running = match &state.running {
            None => None,
            Some(sem) if wait => sem.clone().acquire_owned().await.ok(),
            Some(sem) => Some(sem.clone().try_acquire_owned().map_err(|_| {
                refused(
                    format!(
                        "namespace {ns} runs at most {} invocations at once (its max_concurrency quota); retry after the Retry-After seconds, or ask the cluster's owner for a higher quota",
                        state.limits.max_concurrency.unwrap_or_default()
                    ),
                    Duration::from_secs(1),
                )
            })?),
        };
        Ok(Admitted { _running: running })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(s: &str, burst: Option<u32>) -> Option<RateLimit> {
        Some(RateLimit::parse(s, burst).unwrap())
    }

    #[tokio::test]
    async fn a_rate_limit_refuses_callers_past_the_burst_and_recovers() {
        let a = Admission::default();
        let l = limit("10/s", Some(3));
        for _ in 0..3 {
            a.admit("d", "f", l, Trigger::Http).await.unwrap();
        }
        let e = a.admit("d", "f", l, Trigger::Http).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyRequests);
        assert_eq!(e.retry_after, Some(1));
        assert!(e.message.contains("10/s"), "{}", e.message);
        // Another function has a bucket of its own.
        a.admit("d", "g", l, Trigger::Http).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.admit("d", "f", l, Trigger::Http).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn async_work_waits_for_its_turn_instead() {
        let a = Admission::default();
        let l = limit("2/s", Some(1));
        let t0 = tokio::time::Instant::now();
        for _ in 0..3 {
            a.admit("d", "f", l, Trigger::Async).await.unwrap();
        }
        // One at once, then one every half second.
        assert!(
            t0.elapsed() >= Duration::from_millis(999),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_namespace_concurrency_quota_counts_running_invocations() {
        let a = Admission::default();
        a.set_namespace(
            "t",
            NamespaceLimits {
                max_concurrency: Some(1),
                ..Default::default()
            },
        );
        let held = a.admit("t", "f", None, Trigger::Http).await.unwrap();
        let e = a.admit("t", "g", None, Trigger::Http).await.unwrap_err();
        assert!(e.message.contains("max_concurrency"), "{}", e.message);
        a.admit("other", "g", None, Trigger::Http).await.unwrap();
        drop(held);
        a.admit("t", "g", None, Trigger::Http).await.unwrap();
        a.set_namespace("t", NamespaceLimits::default());
        let _x = a.admit("t", "g", None, Trigger::Http).await.unwrap();
        let _y = a.admit("t", "g", None, Trigger::Http).await.unwrap();
    }
}
