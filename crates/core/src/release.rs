//! Releases: where an alias sends traffic (one version, or two with a weight), how a sticky key
//! keeps a caller on one side of a split, and the plan of a gradual rollout with its limits.
//!
//! The router (in the data plane) and the rollout driver (in the server) share these, and the CLI
//! parses its flags with them, so that a plan means the same on both ends.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where an alias sends its traffic: `version` (`None`: the latest), and with `additional`
/// a second version that gets the given share (0 to 1) of calls, as Lambda's
/// `AdditionalVersionWeights`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasRoute {
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional: Option<Weighted>,
}

/// A version that gets `weight` (0 to 1) of an alias's calls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Weighted {
    pub version: u32,
    pub weight: f64,
}

impl AliasRoute {
    /// One version (`None`: the latest) for every call.
    pub fn single(version: Option<u32>) -> Self {
        Self {
            version,
            additional: None,
        }
    }

    /// The version a call at `point` (uniform in `[0, 1)`) goes to, `latest` standing for a
    /// route that follows the latest version.
    pub fn pick(&self, point: f64, latest: u32) -> u32 {
        match self.additional {
            Some(w) if point < w.weight => w.version,
            _ => self.version.unwrap_or(latest),
        }
    }

    /// Refuses a weight outside `[0, 1)`, or a split between a version and itself.
    pub fn check(&self) -> Result<(), String> {
        if let Some(w) = self.additional {
            if !(0.0..1.0).contains(&w.weight) || !w.weight.is_finite() {
                return Err(format!(
                    "the additional version's weight must be at least 0 and below 1 (it gets that share of calls), not {}",
                    w.weight
                ));
            }
            if Some(w.version) == self.version {
                return Err(format!(
                    "version {} cannot be both the alias's version and its additional version",
                    w.version
                ));
            }
        }
        Ok(())
    }
}

/// A caller's sticky key as a point in `[0, 1)`, the same on every server and every release of
/// Petrel (FNV-1a and a 64-bit finaliser over the alias and the key): a split of weight `w`
/// sends the keys below `w` to the additional version, so widening the split from `w` to `w'`
/// only moves keys from the old side to the new one, never back.
pub fn sticky_point(alias: &str, key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in alias.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads the low-entropy bits of short keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The request header that pins a version (an integer), overriding the alias's split.
pub const PIN_HEADER: &str = "x-petrel-version";
/// The request header, or cookie, whose value keeps a caller on one side of a split.
pub const STICKY_HEADER: &str = "x-petrel-sticky-key";
pub const STICKY_COOKIE: &str = "petrel-sticky";

/// A gradual rollout's plan: the new version's share after each step (percent, rising, the last
/// 100), how long each step is watched before the next, and the limits that roll it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutPlan {
    pub steps: Vec<f64>,
    pub interval_ms: u64,
    /// The new version's error rate (0 to 1) over a step above which it is rolled back, when it
    /// is also above the old version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// The new version's p99 duration, in milliseconds, above which it is rolled back, when it is
    /// also above the old version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    /// Calls of the new version in a step before its limits are judged (fewer: no verdict yet).
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
}

/// The longest step: 30 days.
const MAX_INTERVAL_MS: u64 = 30 * 24 * 3600 * 1000;

fn default_min_calls() -> u64 {
    20
}

impl RolloutPlan {
    /// A plan from the CLI's flags: `--steps 10,50,100` (or a preset) and `--interval 2m`.
    pub fn parse(
        steps: Option<&str>,
        preset: Option<&str>,
        interval: Option<&str>,
    ) -> Result<Self, String> {
        let interval = interval
            .map(|s| {
                humantime::parse_duration(s.trim())
                    .map_err(|e| format!("invalid interval {s:?}: {e} (write it as 30s, 2m, 1h)"))
            })
            .transpose()?;
        let (steps, preset_interval) = match (steps, preset) {
            (Some(_), Some(_)) => return Err("give --steps or --preset, not both".into()),
            (Some(s), None) => (parse_steps(s)?, None),
            (None, Some(p)) => preset_plan(p)?,
            (None, None) => return Err("give the steps (--steps 10,50,100) or a preset (--preset canary-10-5m, linear-10-1m, all-at-once)".into()),
        };
        let interval = interval
            .or(preset_interval)
            .unwrap_or(Duration::from_secs(60));
        if interval < Duration::from_secs(1) || interval.as_millis() > u128::from(MAX_INTERVAL_MS) {
            return Err("the interval must be from 1s to 30 days".into());
        }
        Ok(Self {
            steps,
            interval_ms: interval.as_millis() as u64,
            max_error_rate: None,
            max_p99_ms: None,
            min_calls: default_min_calls(),
        })
    }

    /// Checks what a plan from the API holds.
    pub fn check(&self) -> Result<(), String> {
        check_steps(&self.steps)?;
        if !(1000..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms must be from 1000 (a second) to {MAX_INTERVAL_MS} (30 days)"
            ));
        }
        if let Some(r) = self.max_error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!(
                    "max_error_rate must be between 0 and 1 (0.02 is 2%), not {r}"
                ));
            }
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `2%` or `0.02` as a rate between 0 and 1.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("invalid rate {s:?}: write it as 2% or 0.02"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!(
            "invalid rate {s:?}: it must be between 0% and 100%"
        ));
    }
    Ok(v)
}

fn parse_steps(s: &str) -> Result<Vec<f64>, String> {
    let steps = s
        .split(',')
        .map(|p| {
            let p = p.trim().trim_end_matches('%');
            p.parse::<f64>()
                .map_err(|_| format!("invalid step {p:?} in --steps: write percentages, 10,50,100"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_steps(&steps)?;
    Ok(steps)
}

fn check_steps(steps: &[f64]) -> Result<(), String> {
    if steps.last() != Some(&100.0) {
        return Err("the last step must be 100 (all traffic on the new version)".into());
    }
    if steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0)) {
        return Err("every step is a percentage above 0 and at most 100".into());
    }
    if steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err("the steps must rise (10,50,100)".into());
    }
    Ok(())
}

/// CodeDeploy's kinds of deployment: `canary-P-I` (P% for I, then all), `linear-P-I` (P% more
/// every I), `all-at-once`; CodeDeploy's own names (`Canary10Percent5Minutes`,
/// `Linear10PercentEvery1Minute`, `AllAtOnce`, with or without `Lambda` first) too.
fn preset_plan(p: &str) -> Result<(Vec<f64>, Option<Duration>), String> {
    let unknown = || {
        format!("unknown preset {p:?}: use canary-10-5m, linear-10-1m or all-at-once (any percent and interval)")
    };
    let lower = p.trim().to_ascii_lowercase();
    let lower = lower.strip_prefix("lambda").unwrap_or(&lower);
    if lower == "all-at-once" || lower == "allatonce" {
        return Ok((vec![100.0], None));
    }
    let (kind, rest) = if let Some(r) = lower.strip_prefix("canary") {
        ("canary", r)
    } else if let Some(r) = lower.strip_prefix("linear") {
        ("linear", r)
    } else {
        return Err(unknown());
    };
    // `-10-5m`, or CodeDeploy's `10percent5minutes` / `10percentevery1minute`.
    let (pct, dur) = if let Some(r) = rest.strip_prefix('-') {
        r.split_once('-').ok_or_else(unknown)?
    } else {
        let (pct, d) = rest.split_once("percent").ok_or_else(unknown)?;
        (pct, d.strip_prefix("every").unwrap_or(d))
    };
    let pct: f64 = pct.parse().map_err(|_| unknown())?;
    if !(pct > 0.0 && pct < 100.0) {
        return Err(unknown());
    }
    let dur = dur
        .replace("minutes", "m")
        .replace("minute", "m")
        .replace("hours", "h")
        .replace("hour", "h");
    let dur = humantime::parse_duration(&dur).map_err(|_| unknown())?;
    let steps = if kind == "canary" {
        vec![pct, 100.0]
    } else {
        let mut s = Vec::new();
        let mut at = pct;
        while at < 100.0 - 1e-9 {
            s.push((at * 1e6).round() / 1e6);
            at += pct;
        }
        s.push(100.0);
        s
    };
    Ok((steps, Some(dur)))
}

/// What a caller does to a rollout by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    /// Carry on from the step it was paused at, watched for a whole interval again.
    Resume,
    /// Point the alias at the old version alone, and end the rollout.
    Abort,
}

crate::api::wire_enum! {
    /// Where a rollout is.
    RolloutState {
        Running = "running",
        Paused = "paused",
        /// Every step passed: the alias points at the new version alone.
        Succeeded = "succeeded",
        /// A limit was crossed: the alias points at the old version alone again.
        RolledBack = "rolled_back",
        /// Stopped by hand: the alias points at the old version alone again.
        Aborted = "aborted",
    }
}

impl RolloutState {
    /// Whether it is over (no driver acts on it).
    pub fn finished(self) -> bool {
        !matches!(self, Self::Running | Self::Paused)
    }
}

/// What an unknown alias of a function answers, wherever it is named.
pub fn no_alias(function: &str, alias: &str) -> crate::ApiError {
    crate::ApiError::new(
        crate::ErrorCode::VersionNotFound,
        format!(
            "function {function} has no alias {alias:?}; create it with `petrel alias set {function} {alias} --version N`, or list them with `petrel alias ls {function}`"
        ),
    )
}

/// One line of a rollout's history: a step taken, a verdict, a pause, a rollback, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutEvent {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// The new version's share after it, in percent.
    pub percent: f64,
    pub message: String,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutInfo {
    pub id: i64,
    pub namespace: String,
    pub function: String,
    pub alias: String,
    pub from_version: u32,
    pub to_version: u32,
    pub plan: RolloutPlan,
    pub state: RolloutState,
    /// The index in `plan.steps` of the step being watched.
    pub step: usize,
    /// When the current step began (milliseconds since the Unix epoch).
    pub step_started_at: i64,
    /// Why it ended, for a rollout that rolled back or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub history: Vec<RolloutEvent>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What starts a rollout: `POST /v1/functions/{name}/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartRollout {
    pub alias: String,
    pub to_version: u32,
    pub plan: RolloutPlan,
}

/// An alias as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasInfo {
    pub name: String,
    #[serde(flatten)]
    pub route: AliasRoute,
    pub description: String,
    /// Changes with every update.
    pub revision: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The rollout moving it, if one is running or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasList {
    pub aliases: Vec<AliasInfo>,
}

/// What creates or changes an alias: `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutAlias {
    #[serde(flatten)]
    pub route: AliasRoute,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutInfo>,
}

/// What copies a version from one namespace to another:
/// `POST /v1/functions/{name}/promote?namespace=TO`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Promote {
    /// The namespace the tested version is in.
    pub from: String,
    /// The version to copy (default: what `alias` points at in `from`, else its latest).
    #[serde(default)]
    pub version: Option<u32>,
    /// An alias to point at the copy in the target namespace (created if missing), and to read
    /// the version from in `from` when no version is given.
    #[serde(default)]
    pub alias: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sticky_key_stays_put_while_a_split_widens() {
        let points: Vec<f64> = (0..10_000)
            .map(|i| sticky_point("prod", &format!("user-{i}")))
            .collect();
        assert!(points.iter().all(|p| (0.0..1.0).contains(p)));
        // Uniform enough that a 10% split gets about 10% of the keys.
        let below = points.iter().filter(|p| **p < 0.1).count();
        assert!((900..=1100).contains(&below), "{below}");
        let route = |w| AliasRoute {
            version: Some(1),
            additional: Some(Weighted {
                version: 2,
                weight: w,
            }),
        };
        for p in &points {
            let mut on_new = false;
            for w in [0.1, 0.25, 0.5, 0.9] {
                let now_new = route(w).pick(*p, 9) == 2;
                assert!(!on_new || now_new, "a key went back to the old version");
                on_new = now_new;
            }
        }
        assert_eq!(sticky_point("prod", "k"), sticky_point("prod", "k"));
        assert_ne!(sticky_point("prod", "k"), sticky_point("beta", "k"));
    }

    #[test]
    fn routes_check_their_weights() {
        assert!(AliasRoute::single(None).check().is_ok());
        let bad = |v, w| AliasRoute {
            version: Some(1),
            additional: Some(Weighted {
                version: v,
                weight: w,
            }),
        };
        assert!(bad(2, 1.0).check().is_err());
        assert!(bad(2, -0.1).check().is_err());
        assert!(bad(1, 0.5).check().is_err());
        assert!(bad(2, 0.5).check().is_ok());
        assert_eq!(AliasRoute::single(None).pick(0.3, 7), 7);
    }

    #[test]
    fn plans_parse_from_flags_and_presets() {
        let p = RolloutPlan::parse(Some("10,50,100"), None, Some("2m")).unwrap();
        assert_eq!((p.steps, p.interval_ms), (vec![10.0, 50.0, 100.0], 120_000));
        let p = RolloutPlan::parse(None, Some("canary-10-5m"), None).unwrap();
        assert_eq!((p.steps, p.interval_ms), (vec![10.0, 100.0], 300_000));
        let p = RolloutPlan::parse(None, Some("LambdaLinear10PercentEvery1Minute"), None).unwrap();
        assert_eq!(p.steps.len(), 10);
        assert_eq!(p.interval_ms, 60_000);
        let p = RolloutPlan::parse(None, Some("Canary10Percent5Minutes"), Some("3s")).unwrap();
        assert_eq!((p.steps, p.interval_ms), (vec![10.0, 100.0], 3_000));
        assert_eq!(
            RolloutPlan::parse(None, Some("all-at-once"), None)
                .unwrap()
                .steps,
            vec![100.0]
        );
        for (s, want) in [
            ("10,50", "last step must be 100"),
            ("50,10,100", "must rise"),
            ("0,100", "above 0"),
            ("x,100", "invalid step"),
        ] {
            let e = RolloutPlan::parse(Some(s), None, None).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
        assert!(RolloutPlan::parse(None, Some("blue-green"), None)
            .unwrap_err()
            .contains("unknown preset"));
        assert!(RolloutPlan::parse(Some("100"), None, Some("100ms")).is_err());
        assert_eq!(parse_rate("2%").unwrap(), 0.02);
        assert_eq!(parse_rate("0.3").unwrap(), 0.3);
        assert!(parse_rate("120%").is_err());
    }
}
