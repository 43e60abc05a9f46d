//! The control plane's operations that change what runs: deploying a package (validate,
//! store, version, tell the data plane), deleting a function, and collecting artifacts no
//! version uses. Petrel's own API and the Lambda API both go through here.

use crate::App;
use bytes::Bytes;
use petrel_core::api::DeployResponse;
use petrel_core::{ApiError, BoxFuture, ErrorCode, Manifest, Runtime, DEFAULT_NAMESPACE};
use petrel_dataplane::DeployedVersion;
use petrel_store::ArtifactStore;
use std::sync::Arc;

impl App {
    /// Refuses a deploy that would take namespace `ns` past its quotas of functions or of
    /// memory (`max_instances × memory_mb` summed over its functions' latest versions).
    pub(crate) async fn check_quotas(
        &self,
        ns: &str,
        spec: &petrel_core::FunctionSpec,
    ) -> Result<(), ApiError> {
        let Some(text) = self.store.namespace_quotas(ns).await? else {
            return Ok(());
        };
        let Ok(q) = serde_json::from_str::<petrel_core::api::Quotas>(&text) else {
            return Ok(());
        };
        let latest: Vec<_> = self
            .store
            .latest_versions()
            .await?
            .into_iter()
            .filter(|(n, v)| n == ns && v.spec.name != spec.name)
            .collect();
        if let Some(max) = q.max_functions {
            if latest.len() as u32 + 1 > max {
                return Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!("namespace {ns} holds {} functions, its max_functions quota: remove one (`petrel rm`), or ask the cluster's owner for a higher quota", latest.len()),
                ));
            }
        }
        if let Some(max) = q.max_memory_mb {
            let others: u64 = latest
                .iter()
                .map(|(_, v)| v.spec.max_instances as u64 * v.spec.memory_mb as u64)
                .sum();
            let this = spec.max_instances as u64 * spec.memory_mb as u64;
            if others + this > max {
                return Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!("this version's max_instances × memory_mb ({this} MiB) with the namespace's other functions ({others} MiB) passes namespace {ns}'s max_memory_mb quota of {max} MiB: lower max_instances or memory_mb, or ask the cluster's owner for a higher quota"),
                ));
            }
        }
        Ok(())
    }

    /// Refuses what a version's manifest asks of tenancy that cannot be given: a JWT issuer the
    /// server has none of, a secret its namespace does not hold.
    pub(crate) async fn check_access_keys(
        &self,
        ns: &str,
        spec: &petrel_core::FunctionSpec,
    ) -> Result<(), ApiError> {
        if spec.invoke_auth == petrel_core::auth::InvokeAuth::Jwt
            && !petrel_core::auth::Authenticator::jwt_configured(&self.keys)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidManifest,
                "invalid `invoke_auth`: \"jwt\" needs a JWT issuer in the server's configuration (a [jwt] table with issuer and audience in its config file); use \"key\" or \"public\" on this server",
            ));
        }
        for secret in &spec.secrets {
            if self.store.secret(ns, secret).await?.is_none() {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!("invalid `secrets`: namespace {ns} has no secret named {secret}; set it first with `petrel secret set {secret} -n {ns}`"),
                ));
            }
        }
        Ok(())
    }

    /// Records a control-plane action of `caller` on namespace `ns` in the audit log. A failure
    /// to write it is logged, not answered: the action has happened.
    pub(crate) async fn audit(
        &self,
        caller: &crate::api::Caller,
        ns: &str,
        action: &str,
        target: &str,
    ) {
        self.write_audit(caller, Some(ns), action, target).await
    }

    /// Like [`App::audit`], for an action on no namespace (an owner key).
    pub(crate) async fn audit_global(
        &self,
        caller: &crate::api::Caller,
        action: &str,
        target: &str,
    ) {
        self.write_audit(caller, None, action, target).await
    }

    async fn write_audit(
        &self,
        caller: &crate::api::Caller,
        ns: Option<&str>,
        action: &str,
        target: &str,
    ) {
        let entry = petrel_store::AuditEntry {
            ts: petrel_core::now_ms(),
            namespace: ns.map(str::to_owned),
            key_id: caller.key_id().map(str::to_owned),
            action: action.to_owned(),
            target: target.to_owned(),
            source: caller.source.map(|ip| ip.to_string()),
            outcome: "ok".to_owned(),
            ..Default::default()
        };
        tracing::info!(
            namespace = ns.unwrap_or("-"),
            key = entry.key_id.as_deref().unwrap_or("-"),
            action,
            target,
            "audit"
        );
        if let Err(e) = self.store.insert_audit(&entry).await {
            tracing::error!(error = %e, action, target, "could not write an audit entry");
        }
    }

    /// Removes artifacts no version refers to, in the background. Artifacts younger than a few
    /// minutes are kept: a deploy may be between storing its package and recording its version.
    pub(crate) fn collect_garbage(&self) {
        let (store, artifacts) = (self.store.clone(), self.artifacts.clone());
        tokio::spawn(async move {
            let referenced = match store.referenced_digests().await {
                Ok(d) => d.into_iter().collect(),
                Err(e) => return tracing::warn!(error = %e, "artifact collection skipped"),
            };
            let _ = tokio::task::spawn_blocking(move || {
                artifacts.collect_garbage(&referenced, std::time::Duration::from_secs(300))
            })
            .await;
        });
    }

    /// Deletes a function (its versions, aliases, logs, records and async work); its pools
    /// close. Whether it existed.
    pub(crate) async fn delete_function(&self, ns: &str, name: &str) -> Result<bool, ApiError> {
        if !self.store.delete_function(ns, name).await? {
            return Ok(false);
        }
        self.dataplane.removed(ns, name);
        // Its triggers stop (and leave their groups) before the answer.
        self.triggers.reconcile_function(ns, name).await;
        self.changed(crate::cluster::kind::FUNCTION, ns, name).await;
        self.collect_garbage();
        Ok(true)
    }

    /// Deploys a package (a zip with its `petrel.toml`) as function `name` of `ns`: a new
    /// version, or none if it equals the latest. `base` is the URL clients reach this server at.
    /// With `no_traffic`, the aliases that follow the latest version are pinned to the version
    /// they serve now, so that the new one gets only the calls that name it (or the latest).
    pub(crate) async fn deploy(
        &self,
        base: &str,
        (ns, name): (String, String),
        package: Bytes,
        no_traffic: bool,
    ) -> Result<DeployResponse, ApiError> {
        let artifacts = self.artifacts.clone();
        let runtime_env = self.runtime.clone();
        let path_name = name.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            let text = ArtifactStore::read_manifest(&package)?;
            let spec = Manifest::from_toml(&text)?.validate()?;
            if spec.name != path_name {
                return Err(ApiError::new(
                    ErrorCode::InvalidManifest,
                    format!(
                        "the manifest names the function {:?} but the request deploys {path_name:?}; make them the same",
                        spec.name
                    ),
                ));
            }
            let digest = artifacts.put_package(&package)?;
            check_code(spec.runtime, &spec.handler, &artifacts.code_dir(&digest), &runtime_env)?;
            Ok((spec, digest, package))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "deploy task failed");
            ApiError::internal()
        })??;
        let (spec, digest, package) = prepared;
        // For java, seconds once per node; then standby JVMs, so the first request finds one.
        self.runtime
            .prepare(spec.runtime, spec.memory_mb)
            .await
            .map_err(|e| ApiError::new(ErrorCode::UnsupportedRuntime, e))?;
        let size = package.len() as u64;
        self.check_access_keys(&ns, &spec).await?;
        self.check_quotas(&ns, &spec).await?;
        let url = crate::api::function_url(base, &ns, &name);
        // The manifest is inside the package, so an equal digest means an equal version:
        // deploying the same directory twice (a restart with --deploy, a CI rerun) adds nothing.
        if let Some(f) = self.store.get_function(&ns, &name).await? {
            let latest = self.store.get_version(&ns, &name, f.latest_version).await?;
            if latest.is_some_and(|v| v.digest == digest && v.spec == spec) {
                // Another server on the same database may have deployed it: serve it here too.
                if self.dataplane.latest_version(&ns, &name) != Some(f.latest_version) {
                    self.dataplane.deployed(DeployedVersion {
                        namespace: ns.clone(),
                        name: name.clone(),
                        version: f.latest_version,
                        code_dir: self.artifacts.code_dir(&digest),
                        digest: digest.clone(),
                        spec: Arc::new(spec),
                    });
                }
                return Ok(DeployResponse {
                    url,
                    namespace: ns,
                    name,
                    version: f.latest_version,
                    digest,
                    created: false,
                    unchanged: true,
                });
            }
        }
        if no_traffic {
            if let Some(f) = self.store.get_function(&ns, &name).await? {
                let pinned = self
                    .store
                    .pin_following_aliases(&ns, &name, f.latest_version)
                    .await?;
                self.dataplane.alias_changed(&ns, &name);
                tracing::info!(namespace = %ns, function = %name, pinned, version = f.latest_version, "no-traffic deploy: aliases that followed the latest stay on it");
            }
        }
        if self.cluster.is_some() {
            // Every node must be able to load the version: the package is in the store before
            // the version that names it.
            self.store.put_package(&digest, &package).await?;
        }
        let (version, created) = self.store.create_version(&ns, &spec, &digest, size).await?;
        self.dataplane.deployed(DeployedVersion {
            namespace: ns.clone(),
            name: name.clone(),
            version,
            code_dir: self.artifacts.code_dir(&digest),
            digest: digest.clone(),
            spec: Arc::new(spec),
        });
        // Deploy compiled the component already; loading it now takes a millisecond and spares
        // the first request the wait.
        self.dataplane.preload_latest(&ns, &name).await;
        // New triggers start, changed ones restart, removed ones stop; unchanged ones go on.
        self.triggers.reconcile_function(&ns, &name).await;
        self.changed(crate::cluster::kind::FUNCTION, &ns, &name)
            .await;
        tracing::info!(namespace = %ns, function = %name, version, "deployed");
        Ok(DeployResponse {
            url,
            namespace: ns,
            name,
            version,
            digest,
            created,
            unchanged: false,
        })
    }
}

/// Checks that the package holds what its runtime will look for, so a deploy fails now rather
/// than at the first request.
fn check_code(
    runtime: Runtime,
    handler: &str,
    code: &std::path::Path,
    env: &petrel_runtime::RuntimeEnv,
) -> Result<(), ApiError> {
    let missing = |what: String| Err(ApiError::new(ErrorCode::InvalidPackage, what));
    match runtime {
        Runtime::Python3 => {
            let (module, _) = handler.rsplit_once('.').unwrap_or((handler, ""));
            let rel = module.replace('.', "/");
            if !code.join(format!("{rel}.py")).is_file()
                && !code.join(&rel).join("__init__.py").is_file()
            {
                return missing(format!(
                    "handler {handler:?} needs {rel}.py in the package, and it is not there"
                ));
            }
        }
        Runtime::Nodejs => {
            let (module, _) = handler.rsplit_once('.').unwrap_or((handler, ""));
            if !["js", "mjs", "cjs"]
                .iter()
                .any(|e| code.join(format!("{module}.{e}")).is_file())
            {
                return missing(format!(
                    "handler {handler:?} needs {module}.js (or .mjs, .cjs) in the package, and it is not there"
                ));
            }
        }
        Runtime::Provided => {
            use std::os::unix::fs::PermissionsExt;
            let ok = std::fs::metadata(code.join("bootstrap"))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !ok {
                return missing(
                    "runtime provided needs an executable file named bootstrap at the root of the package (chmod +x bootstrap)".into(),
                );
            }
        }
        Runtime::Wasm => {
            let path = code.join(handler);
            if !path.is_file() {
                return missing(format!("handler {handler:?} is not in the package"));
            }
            // Validate and compile ahead of time, so the first request only loads it.
            let engine = env.wasm().map_err(|e| {
                tracing::error!(error = %e, "wasm engine unavailable");
                ApiError::internal()
            })?;
            engine
                .prepare(&path)
                .map_err(|m| ApiError::new(ErrorCode::InvalidPackage, format!("{handler}: {m}")))?;
        }
        Runtime::Java => {
            // The runtime client loads classes from the package's root and lib/*.jar.
            let class = handler.split_once("::").map_or(handler, |(c, _)| c);
            let file = format!("{}.class", class.replace('.', "/"));
            let has_jars = std::fs::read_dir(code.join("lib")).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "jar"))
            });
            if !code.join(&file).is_file() && !has_jars {
                return missing(format!(
                    "handler {handler:?} needs {file} at the root of the package or jars in lib/ (the layout Lambda takes: build with `mvn package`, see petrel new --runtime java), and neither is there"
                ));
            }
        }
        Runtime::Http => {}
    }
    Ok(())
}

/// The Lambda API's management calls act on the default namespace through the same deploys
/// and deletes as Petrel's own API.
impl petrel_aws::Control for App {
    fn store(&self) -> &petrel_store::Store {
        &self.store
    }

    fn deploy(&self, name: &str, package: Bytes) -> BoxFuture<'_, Result<u32, ApiError>> {
        let name = name.to_owned();
        Box::pin(async move {
            App::deploy(
                self,
                "",
                (DEFAULT_NAMESPACE.to_owned(), name),
                package,
                false,
            )
            .await
            .map(|d| d.version)
        })
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<bool, ApiError>> {
        let name = name.to_owned();
        Box::pin(async move { self.delete_function(DEFAULT_NAMESPACE, &name).await })
    }

    fn package(&self, digest: &str) -> BoxFuture<'_, Result<Bytes, ApiError>> {
        let path = self.artifacts.package_path(digest);
        Box::pin(async move {
            tokio::fs::read(&path).await.map(Bytes::from).map_err(|e| {
                tracing::error!(path = %path.display(), error = %e, "a version's package is unreadable");
                ApiError::new(
                    ErrorCode::Internal,
                    "the function's package could not be read; deploy its code again",
                )
            })
        })
    }

    fn package_limit(&self) -> usize {
        self.config.package_limit
    }
}
