//! The router: a reference with an alias (`name:prod`) or a pin becomes one version, once per
//! invocation, before anything else looks at it.
//!
//! Precedence: a version in the reference itself (`name:7`), then the caller's pin
//! (`X-Petrel-Version: 7`), then the alias's route (one version, or two with a weight, the side
//! chosen by the caller's sticky key when it sent one), else the latest.
//!
//! Calls without a sticky key are spread by a low-discrepancy sequence per alias (the n-th call
//! at the fractional part of n·φ⁻¹) rather than at random: over any run of calls the split is
//! within a few calls of its weight, where a coin per call would drift by √n.
//!
//! Aliases are read from the [`VersionSource`](crate::VersionSource) and kept for a second:
//! a change made on this server drops its entry at once, one made by another server on the same
//! database (or by a rollout it drives) is seen within that second.

use crate::DataPlane;
use petrel_core::release::{sticky_point, AliasRoute};
use petrel_core::{ApiError, ErrorCode, FunctionRef};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an alias read from the store is used before it is read again.
const ALIAS_TTL: Duration = Duration::from_secs(1);

/// What a caller asked of the router, beside the reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteHints {
    /// A version to run whatever the alias says (`X-Petrel-Version`).
    pub pin: Option<u32>,
    /// A key whose hash picks the side of a split, the same one every time
    /// (`X-Petrel-Sticky-Key`, or the `petrel-sticky` cookie).
    pub sticky: Option<String>,
}

impl RouteHints {
    /// The hints of an HTTP request's headers: the pin header, and the sticky header or cookie.
    /// A pin that is not a version number is refused.
    pub fn from_headers(h: &http::HeaderMap) -> Result<Self, ApiError> {
        use petrel_core::release::{PIN_HEADER, STICKY_COOKIE, STICKY_HEADER};
        let pin = match h.get(PIN_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidRequest,
                            "the X-Petrel-Version header must be a version number (1, 2, ...)",
                        )
                    })?,
            ),
        };
        let sticky = h
            .get(STICKY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                h.get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|c| c.trim().split_once('='))
                    .find(|(k, _)| *k == STICKY_COOKIE)
                    .map(|(_, v)| v.to_owned())
            })
            .filter(|k| !k.is_empty());
        Ok(Self { pin, sticky })
    }
}

type AliasKey = (String, String, String);

/// An alias read recently: when, what it said, and how many calls it has routed (kept across
/// reads, so that the sequence of points goes on).
struct Entry {
    at: Instant,
    route: Option<AliasRoute>,
    calls: Arc<AtomicU64>,
}

/// Aliases read recently.
#[derive(Default)]
pub(crate) struct AliasCache {
    entries: Mutex<HashMap<AliasKey, Entry>>,
}

/// The `n`-th point of the golden-ratio sequence in `[0, 1)`: any run of consecutive points
/// falls below `w` for a share within O(log n / n) of `w`.
fn sequence_point(n: u64) -> f64 {
    const PHI_INV: f64 = 0.618_033_988_749_894_9;
    // In integers, so that the point stays exact however large n grows.
    const STEP: u64 = (PHI_INV * (1u64 << 53) as f64) as u64;
    (n.wrapping_mul(STEP) & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
}

impl DataPlane {
    /// The reference with its version decided: an alias or a pin becomes a version number; a
    /// reference to the latest (or to a version) without a pin stays as it is, borrowed, so that
    /// the common call costs no copy.
    pub async fn route<'r>(
        &self,
        r: &'r FunctionRef,
        hints: &RouteHints,
    ) -> Result<Cow<'r, FunctionRef>, ApiError> {
        if r.version.is_some() {
            return Ok(Cow::Borrowed(r));
        }
        if let Some(pin) = hints.pin {
            return Ok(Cow::Owned(r.at(pin)));
        }
        let Some(alias) = &r.alias else {
            return Ok(Cow::Borrowed(r));
        };
        let (route, calls) = self.cached_alias(&r.namespace, &r.name, alias).await?;
        let route = route.ok_or_else(|| petrel_core::release::no_alias(&r.name, alias))?;
        let latest = match route.version {
            Some(_) => 0,
            None => self
                .latest_version(&r.namespace, &r.name)
                .ok_or_else(|| crate::not_found(r))?,
        };
        let point = match &hints.sticky {
            Some(key) => sticky_point(alias, key),
            None => sequence_point(calls.fetch_add(1, Ordering::Relaxed)),
        };
        Ok(Cow::Owned(r.at(route.pick(point, latest))))
    }

    /// Where an alias sends traffic; `None` if the function has no such alias.
    pub async fn alias_route(
        &self,
        namespace: &str,
        name: &str,
        alias: &str,
    ) -> Result<Option<AliasRoute>, ApiError> {
        Ok(self.cached_alias(namespace, name, alias).await?.0)
    }

    async fn cached_alias(
        &self,
        namespace: &str,
        name: &str,
        alias: &str,
    ) -> Result<(Option<AliasRoute>, Arc<AtomicU64>), ApiError> {
        let key = (namespace.to_owned(), name.to_owned(), alias.to_owned());
        if let Some(e) = self.inner.aliases.entries.lock().unwrap().get(&key) {
            if e.at.elapsed() < ALIAS_TTL {
                return Ok((e.route, e.calls.clone()));
            }
        }
        let route = self
            .inner
            .source
            .alias(namespace, name, alias)
            .await
            .map_err(|e| {
                tracing::error!(function = %name, alias, error = %e, "could not read an alias");
                ApiError::internal()
            })?;
        let mut entries = self.inner.aliases.entries.lock().unwrap();
        if entries.len() > 100_000 {
            // Names a client made up are cached too (as absent): keep the map bounded.
            entries.retain(|_, e| e.at.elapsed() < ALIAS_TTL);
        }
        let calls = entries
            .get(&key)
            .map(|e| e.calls.clone())
            .unwrap_or_default();
        entries.insert(
            key,
            Entry {
                at: Instant::now(),
                route,
                calls: calls.clone(),
            },
        );
        Ok((route, calls))
    }

    /// An alias of a function changed on this server (or went away with its function): the
    /// next call reads it again.
    pub fn alias_changed(&self, namespace: &str, name: &str) {
        for ((ns, n, _), e) in self.inner.aliases.entries.lock().unwrap().iter_mut() {
            if ns == namespace && n == name {
                e.at = Instant::now() - ALIAS_TTL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_from_headers_and_cookies() {
        let mut h = http::HeaderMap::new();
        assert_eq!(RouteHints::from_headers(&h).unwrap(), RouteHints::default());
        h.insert("cookie", "a=1; petrel-sticky=user-7; b=2".parse().unwrap());
        assert_eq!(
            RouteHints::from_headers(&h).unwrap().sticky.as_deref(),
            Some("user-7")
        );
        h.insert("x-petrel-sticky-key", "k".parse().unwrap());
        h.insert("x-petrel-version", " 7".parse().unwrap());
        let hints = RouteHints::from_headers(&h).unwrap();
        assert_eq!((hints.pin, hints.sticky.as_deref()), (Some(7), Some("k")));
        h.insert("x-petrel-version", "seven".parse().unwrap());
        assert!(RouteHints::from_headers(&h).is_err());
    }

    #[test]
    fn sequence_points_hold_a_split_over_any_run() {
        for w in [0.01, 0.1, 0.25, 0.5, 0.9] {
            for start in [0u64, 17, 1 << 40] {
                for n in [100u64, 1_000, 10_000] {
                    let below = (start..start + n)
                        .filter(|i| sequence_point(*i) < w)
                        .count();
                    let want = w * n as f64;
                    assert!(
                        (below as f64 - want).abs() <= 3.0,
                        "{below} of {n} from {start} below {w}"
                    );
                }
            }
        }
    }
}
