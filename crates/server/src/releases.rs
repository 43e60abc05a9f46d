//! Releases on the control plane: setting aliases (one version or a weighted split), gradual
//! rollouts with the driver that moves them and rolls them back, and promotion of a tested
//! version from one namespace (environment) to another.
//!
//! Every alias change goes through the store and drops the router's cached entry on this server;
//! other servers on the same database see it within the router's one-second cache. A rollout's
//! state is in the store: the driver on each server claims running rollouts with a lease
//! ([`Store::claim_rollouts`](petrel_store::Store::claim_rollouts)), so one server drives each,
//! and a restarted server (its worker id is kept in the data directory) picks its own up again.

use crate::App;
use petrel_core::api::DeployResponse;
use petrel_core::release::{
    AliasInfo, AliasRoute, Promote, PutAlias, RolloutAction, RolloutEvent, RolloutInfo,
    RolloutState, StartRollout, Weighted,
};
use petrel_core::{now_ms, ApiError, ErrorCode};
use petrel_dataplane::DeployedVersion;
use petrel_store::{Alias, VersionStats};
use std::sync::Arc;
use std::time::Duration;

/// How often the driver looks at its rollouts, and how long its lease on them lasts.
const TICK: Duration = Duration::from_millis(500);
const LEASE: Duration = Duration::from_secs(5);

fn in_rollout(name: &str, alias: &str, r: &RolloutInfo) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "alias {alias} of {name} is being moved by rollout {} ({}); wait for it, or stop it with `petrel rollout abort {name} --alias {alias}`",
            r.id,
            r.state.as_str()
        ),
    )
}

fn percent(w: f64) -> String {
    let p = w * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round())
    } else {
        format!("{p:.2}%")
    }
}

impl App {
    /// Refuses a version number the function does not have.
    async fn check_version(&self, ns: &str, name: &str, v: u32) -> Result<(), ApiError> {
        match self.store.get_version(ns, name, v).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                ErrorCode::VersionNotFound,
                format!(
                    "function {name} has no version {v}; `petrel get {name}` lists its versions"
                ),
            )),
        }
    }

    pub(crate) async fn alias_info(
        &self,
        ns: &str,
        name: &str,
        a: Alias,
    ) -> Result<AliasInfo, ApiError> {
        let rollout = self.store.active_rollout(ns, name, &a.name).await?;
        Ok(AliasInfo {
            name: a.name,
            route: a.route,
            description: a.description,
            revision: a.revision,
            created_at: a.created_at,
            updated_at: a.updated_at,
            rollout,
        })
    }

    /// Creates or changes an alias. Refused while a rollout moves it.
    pub(crate) async fn set_alias(
        &self,
        ns: &str,
        name: &str,
        alias: &str,
        put: PutAlias,
    ) -> Result<(AliasInfo, bool), ApiError> {
        if !petrel_core::is_alias_name(alias) {
            return Err(ApiError::new(
                ErrorCode::InvalidName,
                format!("{alias:?} is not an alias name: use 1 to 128 letters, digits, '-' and '_', not all digits, and not 'latest'"),
            ));
        }
        put.route
            .check()
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
        for v in put
            .route
            .version
            .into_iter()
            .chain(put.route.additional.map(|w| w.version))
        {
            self.check_version(ns, name, v).await?;
        }
        if let Some(r) = self.store.active_rollout(ns, name, alias).await? {
            return Err(in_rollout(name, alias, &r));
        }
        let existing = self.store.get_alias(ns, name, alias).await?;
        let description = put
            .description
            .or_else(|| existing.as_ref().map(|a| a.description.clone()))
            .unwrap_or_default();
        let created = existing.is_none();
        if !self
            .store
            .put_alias((ns, name), alias, put.route, &description, created)
            .await?
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the alias changed while this request was made; send it again",
            ));
        }
        self.dataplane.alias_changed(ns, name);
        self.changed(crate::cluster::kind::ALIAS, ns, name).await;
        let a = self
            .store
            .get_alias(ns, name, alias)
            .await?
            .ok_or_else(|| petrel_core::release::no_alias(name, alias))?;
        Ok((self.alias_info(ns, name, a).await?, created))
    }

    /// Removes an alias (a rollout moving it is aborted first). Whether it existed.
    pub(crate) async fn remove_alias(
        &self,
        ns: &str,
        name: &str,
        alias: &str,
    ) -> Result<bool, ApiError> {
        if let Some(mut r) = self.store.active_rollout(ns, name, alias).await? {
            r.state = RolloutState::Aborted;
            r.reason = Some("its alias was removed".into());
            r.history
                .push(event(0.0, "aborted: the alias was removed".into()));
            self.store.update_rollout(&r, None).await?;
        }
        let gone = self.store.delete_alias(ns, name, alias).await?;
        self.dataplane.alias_changed(ns, name);
        self.changed(crate::cluster::kind::ALIAS, ns, name).await;
        Ok(gone)
    }

    /// Starts moving `alias` to a new version along a plan; its first step is taken now.
    pub(crate) async fn start_rollout(
        &self,
        ns: &str,
        name: &str,
        start: StartRollout,
    ) -> Result<RolloutInfo, ApiError> {
        start
            .plan
            .check()
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e))?;
        let alias = &start.alias;
        let a = self
            .store
            .get_alias(ns, name, alias)
            .await?
            .ok_or_else(|| petrel_core::release::no_alias(name, alias))?;
        if let Some(r) = self.store.active_rollout(ns, name, alias).await? {
            return Err(in_rollout(name, alias, &r));
        }
        if a.route.additional.is_some() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("alias {alias} already splits its traffic; point it at one version first (`petrel alias set {name} {alias} --version N`)"),
            ));
        }
        let from = match a.route.version {
            Some(v) => v,
            None => {
                self.store
                    .get_function(ns, name)
                    .await?
                    .ok_or_else(|| crate::api::function_not_found(name))?
                    .latest_version
            }
        };
        let to = start.to_version;
        self.check_version(ns, name, to).await?;
        if to == from {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("alias {alias} already points at version {to}"),
            ));
        }
        let first = start.plan.steps[0] / 100.0;
        let message = format!(
            "started: {} of {alias} to version {to}, {} on version {from}",
            percent(first),
            percent(1.0 - first)
        );
        let r = self
            .store
            .create_rollout(
                (ns, name),
                alias,
                (from, to),
                &start.plan,
                event(start.plan.steps[0], message),
            )
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("alias {alias} of {name} already has a rollout in progress"),
                )
            })?;
        // The alias is pinned to `from` (it may have followed the latest) and split.
        let route = step_route(from, to, first);
        if !self
            .store
            .move_alias((ns, name), alias, a.route, route)
            .await?
        {
            let mut r = r;
            r.state = RolloutState::Aborted;
            r.reason = Some("the alias changed while the rollout started".into());
            self.store.update_rollout(&r, None).await?;
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the alias changed while the rollout started; start it again",
            ));
        }
        // The rollout runs from here on: should this write fail, its hold runs out by itself.
        if let Err(e) = self.store.rollout_started(r.id).await {
            tracing::warn!(rollout = r.id, error = %e, "could not release a new rollout to the drivers; it waits for its hold to run out");
        }
        self.dataplane.alias_changed(ns, name);
        self.changed(crate::cluster::kind::ALIAS, ns, name).await;
        tracing::info!(namespace = ns, function = name, alias = %alias, from, to, "rollout started");
        let mut r = r;
        if route.additional.is_none() {
            // All at once: nothing to watch.
            r.state = RolloutState::Succeeded;
            r.history.push(event(
                100.0,
                format!("succeeded: all of {alias} on version {to}"),
            ));
            self.store.update_rollout(&r, None).await?;
        }
        Ok(r)
    }

    /// The rollout of a function's alias: the one in progress, else the latest.
    pub(crate) async fn rollout_of(
        &self,
        ns: &str,
        name: &str,
        alias: &str,
    ) -> Result<RolloutInfo, ApiError> {
        if let Some(r) = self.store.active_rollout(ns, name, alias).await? {
            return Ok(r);
        }
        self.store
            .list_rollouts(ns, name)
            .await?
            .into_iter()
            .find(|r| r.alias == alias)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::VersionNotFound,
                    format!("alias {alias} of {name} has had no rollout; start one with `petrel rollout start {name} --alias {alias} --to N`"),
                )
            })
    }

    /// Pauses, resumes or aborts the rollout in progress on an alias.
    pub(crate) async fn act_on_rollout(
        &self,
        ns: &str,
        name: &str,
        alias: &str,
        action: RolloutAction,
    ) -> Result<RolloutInfo, ApiError> {
        let mut r = self
            .store
            .active_rollout(ns, name, alias)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Conflict,
                    format!("alias {alias} of {name} has no rollout in progress"),
                )
            })?;
        let at = r.plan.steps[r.step];
        match (action, r.state) {
            (RolloutAction::Pause, RolloutState::Running) => {
                r.state = RolloutState::Paused;
                r.history.push(event(at, "paused by hand".into()));
            }
            (RolloutAction::Resume, RolloutState::Paused) => {
                r.state = RolloutState::Running;
                // The step is watched for a whole interval again.
                r.step_started_at = now_ms();
                r.history.push(event(at, "resumed by hand".into()));
            }
            (RolloutAction::Abort, _) => {
                self.roll_back(&mut r, RolloutState::Aborted, "aborted by hand".into())
                    .await?;
            }
            (_, state) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("rollout {} is {}", r.id, state.as_str()),
                ))
            }
        }
        self.store.update_rollout(&r, None).await?;
        Ok(r)
    }

    /// Points the alias at the old version alone again, and marks the rollout ended.
    async fn roll_back(
        &self,
        r: &mut RolloutInfo,
        state: RolloutState,
        reason: String,
    ) -> Result<(), ApiError> {
        let key = (r.namespace.as_str(), r.function.as_str());
        if let Some(a) = self.store.get_alias(key.0, key.1, &r.alias).await? {
            self.store
                .move_alias(
                    key,
                    &r.alias,
                    a.route,
                    AliasRoute::single(Some(r.from_version)),
                )
                .await?;
            self.dataplane.alias_changed(key.0, key.1);
            self.changed(crate::cluster::kind::ALIAS, key.0, key.1)
                .await;
        }
        r.state = state;
        let verb = if state == RolloutState::RolledBack {
            "rolled back"
        } else {
            "aborted"
        };
        r.history.push(event(
            0.0,
            format!(
                "{verb}: {reason}; all of {} on version {} again",
                r.alias, r.from_version
            ),
        ));
        r.reason = Some(reason);
        tracing::warn!(namespace = %r.namespace, function = %r.function, alias = %r.alias, to = r.to_version, reason = r.reason.as_deref().unwrap_or(""), "rollout {verb}");
        Ok(())
    }

    /// Copies a version from namespace `p.from` into `to` (the same artifact, by digest, and
    /// the same configuration), and points `p.alias` at the copy when asked.
    pub(crate) async fn promote(
        &self,
        base: &str,
        to: &str,
        name: &str,
        p: Promote,
    ) -> Result<DeployResponse, ApiError> {
        if p.from == to {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "promote copies between two namespaces: --from and --to must differ",
            ));
        }
        let source_version = match (p.version, &p.alias) {
            (Some(v), _) => v,
            (None, Some(alias)) => {
                let latest = self
                    .store
                    .get_function(&p.from, name)
                    .await?
                    .map(|f| f.latest_version);
                match self.store.get_alias(&p.from, name, alias).await? {
                    Some(a) if a.route.additional.is_some() => {
                        return Err(ApiError::new(ErrorCode::Conflict, format!("alias {alias} in {} splits its traffic between two versions: name the one to promote with --version", p.from)))
                    }
                    Some(a) => a.route.version.or(latest).ok_or_else(|| crate::api::function_not_found(name))?,
                    None => self.store.get_function(&p.from, name).await?.ok_or_else(|| crate::api::function_not_found(name))?.latest_version,
                }
            }
            (None, None) => {
                self.store
                    .get_function(&p.from, name)
                    .await?
                    .ok_or_else(|| crate::api::function_not_found(name))?
                    .latest_version
            }
        };
        let v = self
            .store
            .get_version(&p.from, name, source_version)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::VersionNotFound,
                    format!(
                        "function {name} has no version {source_version} in namespace {}",
                        p.from
                    ),
                )
            })?;
        self.check_access_keys(to, &v.spec).await?;
        self.check_quotas(to, &v.spec).await?;
        if !self.store.namespace_exists(to).await? {
            self.store.create_namespace(to).await?;
        }
        // Nothing is rebuilt: the copy is the same package, under the same digest.
        let url = crate::api::function_url(base, to, name);
        let unchanged = match self.store.get_function(to, name).await? {
            Some(f) => self
                .store
                .get_version(to, name, f.latest_version)
                .await?
                .filter(|l| l.digest == v.digest && l.spec == v.spec)
                .map(|l| l.version),
            None => None,
        };
        let (version, created) = match unchanged {
            Some(n) => (n, false),
            None => {
                self.store
                    .create_version(to, &v.spec, &v.digest, v.size_bytes)
                    .await?
            }
        };
        if unchanged.is_none() {
            let digest = v.digest.clone();
            let artifacts = self.artifacts.clone();
            let code_dir = tokio::task::spawn_blocking(move || artifacts.ensure_unpacked(&digest))
                .await
                .map_err(|_| ApiError::internal())?
                .map_err(ApiError::from)?;
            self.dataplane.deployed(DeployedVersion {
                namespace: to.to_owned(),
                name: name.to_owned(),
                version,
                digest: v.digest.clone(),
                spec: Arc::new(v.spec.clone()),
                code_dir,
            });
            self.triggers.reconcile_function(to, name).await;
            self.changed(crate::cluster::kind::FUNCTION, to, name).await;
        }
        if let Some(alias) = &p.alias {
            let put = PutAlias {
                route: AliasRoute::single(Some(version)),
                description: None,
            };
            self.set_alias(to, name, alias, put).await?;
        }
        tracing::info!(from = %p.from, to, function = name, version, source_version, "promoted");
        Ok(DeployResponse {
            namespace: to.to_owned(),
            name: name.to_owned(),
            version,
            digest: v.digest,
            created,
            unchanged: unchanged.is_some(),
            url,
        })
    }
}

fn event(percent: f64, message: String) -> RolloutEvent {
    RolloutEvent {
        at: now_ms(),
        percent,
        message,
    }
}

/// The route of a step: `share` (0 to 1) of calls on `to`, the rest on `from`.
fn step_route(from: u32, to: u32, share: f64) -> AliasRoute {
    if share >= 1.0 {
        AliasRoute::single(Some(to))
    } else {
        AliasRoute {
            version: Some(from),
            additional: Some(Weighted {
                version: to,
                weight: share,
            }),
        }
    }
}

/// Why a step's figures cross the plan's limits, if they do: the new version is judged once it
/// has `min_calls` calls in the step, and only against a limit the old version stays within.
fn verdict(r: &RolloutInfo, new: &VersionStats, old: &VersionStats) -> Option<String> {
    if new.calls < r.plan.min_calls {
        return None;
    }
    if let Some(max) = r.plan.max_error_rate {
        if new.error_rate() > max && new.error_rate() > old.error_rate() {
            return Some(format!(
                "version {}'s error rate {} over {} calls passed the limit of {} (version {}: {} over {} calls)",
                r.to_version, percent(new.error_rate()), new.calls, percent(max),
                r.from_version, percent(old.error_rate()), old.calls
            ));
        }
    }
    if let Some(max) = r.plan.max_p99_ms {
        if new.p99_ms > max && new.p99_ms > old.p99_ms {
            return Some(format!(
                "version {}'s p99 of {} ms over {} calls passed the limit of {max} ms (version {}: {} ms)",
                r.to_version, new.p99_ms, new.calls, r.from_version, old.p99_ms
            ));
        }
    }
    None
}

/// Drives the rollouts this server holds the lease of, every tick, until the process ends.
pub(crate) fn spawn_driver(app: App, owner: String) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            // Most of the time nothing runs: look before taking leases, which is a write.
            match app.store.any_running_rollout().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for rollouts; trying again");
                    continue;
                }
            }
            let until = now_ms() + LEASE.as_millis() as i64;
            let claimed = match app.store.claim_rollouts(&owner, until).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim rollouts; trying again");
                    continue;
                }
            };
            for r in claimed {
                let id = r.id;
                if let Err(e) = drive(&app, &owner, r).await {
                    tracing::warn!(rollout = id, error = %e.message, "a rollout step failed; trying again");
                }
            }
        }
    });
}

/// One look at a running rollout: roll back if the step's figures cross a limit, else take the
/// next step once the interval has passed.
async fn drive(app: &App, owner: &str, mut r: RolloutInfo) -> Result<(), ApiError> {
    let key = (r.namespace.as_str(), r.function.as_str());
    let new = app
        .store
        .version_stats(key, r.to_version, r.step_started_at)
        .await?;
    let old = app
        .store
        .version_stats(key, r.from_version, r.step_started_at)
        .await?;
    let share = r.plan.steps[r.step] / 100.0;
    let expected = step_route(r.from_version, r.to_version, share);
    let current = app
        .store
        .get_alias(key.0, key.1, &r.alias)
        .await?
        .map(|a| a.route);
    if current != Some(expected) {
        app.roll_back(
            &mut r,
            RolloutState::Aborted,
            "the alias was changed by something other than the rollout".into(),
        )
        .await?;
        app.store.update_rollout(&r, Some(owner)).await?;
        return Ok(());
    }
    if let Some(reason) = verdict(&r, &new, &old) {
        app.roll_back(&mut r, RolloutState::RolledBack, reason)
            .await?;
        app.store.update_rollout(&r, Some(owner)).await?;
        return Ok(());
    }
    let now = now_ms();
    if now - r.step_started_at < r.plan.interval_ms as i64 {
        return Ok(());
    }
    let judged = if new.calls < r.plan.min_calls {
        format!(
            "no verdict (version {} had {} calls, fewer than {})",
            r.to_version, new.calls, r.plan.min_calls
        )
    } else {
        format!(
            "within limits (version {}: {} errors over {} calls, p99 {} ms; version {}: {} over {}, p99 {} ms)",
            r.to_version, percent(new.error_rate()), new.calls, new.p99_ms,
            r.from_version, percent(old.error_rate()), old.calls, old.p99_ms
        )
    };
    let next_step = r.step + 1;
    let next_share = r.plan.steps[next_step] / 100.0;
    let next = step_route(r.from_version, r.to_version, next_share);
    // The lease is checked first, so that a server that lost it moves nothing.
    r.step = next_step;
    r.step_started_at = now;
    let message = if next.additional.is_none() {
        r.state = RolloutState::Succeeded;
        format!(
            "step {next_step} {judged}; succeeded: all of {} on version {}",
            r.alias, r.to_version
        )
    } else {
        format!(
            "step {next_step} {judged}; {} of {} to version {}",
            percent(next_share),
            r.alias,
            r.to_version
        )
    };
    r.history.push(event(next_share * 100.0, message));
    if !app.store.update_rollout(&r, Some(owner)).await? {
        return Ok(());
    }
    if !app.store.move_alias(key, &r.alias, expected, next).await? {
        tracing::warn!(rollout = r.id, "the alias changed under the rollout's step");
    }
    app.dataplane.alias_changed(key.0, key.1);
    app.changed(crate::cluster::kind::ALIAS, key.0, key.1).await;
    tracing::info!(namespace = key.0, function = key.1, alias = %r.alias, share = next_share, "rollout step");
    Ok(())
}
