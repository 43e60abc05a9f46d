//! `petrel serve`: wires the store, the artifact store, the data plane and the control API into
//! one HTTP server, and runs it until a stop signal, letting in-flight requests finish.
//!
//! Business rules live in the crates it wires; this crate owns configuration, routing and the
//! process lifecycle (start, drain, stop).

#![forbid(unsafe_code)]

mod api;
mod auth;
mod cluster;
pub mod config;
mod control;
mod jwt;
mod logs;
mod releases;
mod tls;

pub use config::{parse_memory_budget, ConfigFile, ServeConfig};
pub use petrel_dataplane::keepalive;
pub use petrel_runtime::PrewarmConfig;

use anyhow::Context;
use axum::Router;
use petrel_core::BoxFuture;
use petrel_dataplane::{DataPlane, DeployedVersion, VersionSource};
use petrel_runtime::{LogSink, RuntimeConfig, RuntimeEnv};
use petrel_store::{ArtifactStore, PackageLimits, Store};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Shared state of the control API.
#[derive(Clone)]
pub(crate) struct App {
    store: Store,
    artifacts: ArtifactStore,
    dataplane: DataPlane,
    runtime: RuntimeEnv,
    logs: logs::LogHub,
    config: Arc<ServeConfig>,
    addr: SocketAddr,
    queue: petrel_async::AsyncQueue,
    triggers: petrel_triggers::Triggers,
    /// API keys, and the master key that seals secrets.
    keys: auth::Keys,
    /// The OpenAPI document, rendered once from the routes.
    openapi: Arc<String>,
    /// Cluster mode: this node's membership, change feed and routing.
    cluster: Option<Arc<cluster::Cluster>>,
    /// This server's name in claims (and the cluster's node id by default).
    worker_id: Arc<str>,
    /// When this server started (milliseconds since the Unix epoch).
    started_at: i64,
}

impl App {
    /// Tells the other nodes of the cluster that something they serve changed (nothing outside
    /// cluster mode). A failure is logged: the others see the change at their next full reload
    /// only, which the log says.
    pub(crate) async fn changed(&self, kind: &str, ns: &str, name: &str) {
        let Some(c) = &self.cluster else { return };
        if let Err(e) = self.store.record_change(kind, ns, name, &c.node_id).await {
            tracing::error!(namespace = %ns, name = %name, kind, error = %e, "cluster: could not announce a change; other nodes see it after their restart");
        }
    }
}

/// Idle times each function's saved histogram holds, so that unchanged ones are not rewritten.
type Saved = std::collections::HashMap<(String, String), u32>;

/// Saves what the hybrid keep-alive policy learned since the last save (everything when
/// `saved` is empty), so a restart keeps it.
async fn save_histograms(store: &Store, dp: &DataPlane, saved: &mut Saved) {
    let changed: Vec<_> = dp
        .idle_histograms()
        .into_iter()
        .filter(|(ns, name, h)| saved.get(&(ns.clone(), name.clone())) != Some(&h.samples()))
        .collect();
    let rows: Vec<(String, String, String)> = changed
        .iter()
        .filter_map(|(ns, name, h)| {
            Some((ns.clone(), name.clone(), serde_json::to_string(h).ok()?))
        })
        .collect();
    match store.save_idle_histograms(&rows).await {
        Ok(()) => saved.extend(
            changed
                .into_iter()
                .map(|(ns, name, h)| ((ns, name), h.samples())),
        ),
        Err(e) => tracing::warn!(error = %e, "could not save idle-time histograms"),
    }
}

/// Saves changed histograms every minute; what was restored at start counts as saved.
fn spawn_histogram_saver(store: Store, dp: DataPlane) {
    let mut saved: Saved = dp
        .idle_histograms()
        .into_iter()
        .map(|(ns, name, h)| ((ns, name), h.samples()))
        .collect();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            save_histograms(&store, &dp, &mut saved).await;
        }
    });
}

/// Loads versions from the store for the data plane.
struct StoreSource {
    store: Store,
    artifacts: ArtifactStore,
}

impl VersionSource for StoreSource {
    fn alias(
        &self,
        namespace: &str,
        name: &str,
        alias: &str,
    ) -> BoxFuture<'_, anyhow::Result<Option<petrel_core::release::AliasRoute>>> {
        let (namespace, name, alias) = (namespace.to_owned(), name.to_owned(), alias.to_owned());
        Box::pin(async move {
            Ok(self
                .store
                .get_alias(&namespace, &name, &alias)
                .await?
                .map(|a| a.route))
        })
    }

    fn load(
        &self,
        namespace: &str,
        name: &str,
        version: u32,
    ) -> BoxFuture<'_, anyhow::Result<Option<DeployedVersion>>> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            let Some(v) = self.store.get_version(&namespace, &name, version).await? else {
                return Ok(None);
            };
            let code_dir = cluster::code_for(&self.store, &self.artifacts, &v.digest).await?;
            Ok(Some(DeployedVersion {
                namespace,
                name,
                version: v.version,
                digest: v.digest,
                spec: Arc::new(v.spec),
                code_dir,
            }))
        })
    }
}

/// A server that has bound its listener and loaded its state, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    /// TLS on the listener, when configured.
    tls: Option<Arc<tls::TlsFiles>>,
    router: Router,
    app: App,
    log_writer: tokio::task::JoinHandle<()>,
    record_writer: tokio::task::JoinHandle<()>,
    dispatcher: petrel_async::Dispatcher,
}

/// This server's name in async claims: from the config, else kept in the data directory so that
/// a restart takes back what the server was running when it died.
fn worker_id(config: &ServeConfig) -> anyhow::Result<String> {
    if let Some(id) = config.worker_id.as_ref().or(config.node_id.as_ref()) {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            let tmp = config.data_dir.join("worker-id.tmp");
            std::fs::write(&tmp, &id)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("could not write {}", path.display()))?;
            Ok(id)
        }
    }
}

impl Server {
    /// Opens the stores, restores every deployed function into the data plane and binds.
    pub async fn start(mut config: ServeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "could not create the data directory {}",
                config.data_dir.display()
            )
        })?;
        // Instances run with their code as working directory: every path handed to them must
        // be absolute, whatever directory Petrel was started from.
        config.data_dir = std::fs::canonicalize(&config.data_dir).with_context(|| {
            format!(
                "could not resolve the data directory {}",
                config.data_dir.display()
            )
        })?;
        let store = match &config.store {
            Some(url) => Store::open(url).await,
            None => Store::open_sqlite(&config.data_dir.join("petrel.db")).await,
        }
        .context("could not open the store")?;
        let artifacts = ArtifactStore::new(&config.data_dir, PackageLimits::default())
            .context("could not open the artifact store")?;
        let (sink, log_rx) = LogSink::new(16 * 1024);
        let (hub, log_writer) = logs::spawn_writer(store.clone(), log_rx);
        logs::spawn_retention(
            store.clone(),
            config.log_retention_lines,
            config.log_retention,
        );
        // One TLS configuration for everything outbound: https deliveries and wasm guests.
        let tls = Arc::new(
            petrel_async::tls_client_config(config.tls_ca_file.as_deref())
                .map_err(|e| anyhow::anyhow!("tls_ca_file: {e}"))?,
        );
        let env = RuntimeEnv::new(
            &config.data_dir,
            sink,
            RuntimeConfig {
                payload_limit: config.payload_limit,
                prewarm: config.prewarm,
                instance_limits: config.instance_limits,
                sandbox: config.sandbox,
            },
        )
        .context("could not prepare the runtime directory")?;
        env.set_outbound_tls(tls.clone());
        env.prewarm();
        let env_status = env.limits_status().to_owned();
        let sandbox_status = env.sandbox_status().to_owned();
        let prewarm = env.prewarm_config();
        let (dataplane, records) = DataPlane::new(
            Arc::new(env.clone()),
            Arc::new(StoreSource {
                store: store.clone(),
                artifacts: artifacts.clone(),
            }),
            config.payload_limit,
        );
        dataplane
            .memory_budget()
            .set_limit_mb(config.memory_budget_mb);
        let record_writer = logs::spawn_record_writer(store.clone(), records);
        if config.auth || !config.lambda_access_keys.is_empty() {
            tracing::info!(
                configured_keys = config.lambda_access_keys.len(),
                "Lambda API: AWS Signature V4 required (a Petrel key's id and token, or a configured lambda_access_keys entry)"
            );
        } else {
            tracing::info!("Lambda API: authentication is off; its requests are not authenticated");
        }
        if let Some(endpoint) = &config.otlp_endpoint {
            dataplane.export_spans_to(endpoint);
            tracing::info!(%endpoint, "exporting invocation spans over OTLP");
        }
        // Changes made from here on are applied after the restore, which reads what is older.
        let feed_start = if config.advertise.is_some() {
            store
                .last_change()
                .await
                .context("could not read the change feed")?
        } else {
            0
        };
        let mut restored = 0;
        // Each runtime and size readied once, as a deploy would have: a java function's first
        // request after a restart then finds a standby JVM.
        let mut prepared = std::collections::HashSet::new();
        for (namespace, v) in store
            .latest_versions()
            .await
            .context("could not read deployed functions")?
        {
            let code_dir = cluster::code_for(&store, &artifacts, &v.digest).await;
            match code_dir {
                Ok(code_dir) => {
                    if prepared.insert((v.spec.runtime, v.spec.memory_mb)) {
                        env.prepare_in_background(v.spec.runtime, v.spec.memory_mb);
                    }
                    dataplane.deployed(DeployedVersion {
                        namespace,
                        name: v.spec.name.clone(),
                        version: v.version,
                        digest: v.digest,
                        spec: Arc::new(v.spec),
                        code_dir,
                    });
                    restored += 1;
                }
                Err(e) => {
                    tracing::error!(function = %v.spec.name, error = %e, "could not restore a function's code; it will not serve")
                }
            }
        }
        match store.load_idle_histograms().await {
            Ok(rows) => {
                for (ns, name, json) in rows {
                    match serde_json::from_str(&json) {
                        Ok(h) => dataplane.restore_idle_histogram(&ns, &name, h),
                        Err(e) => {
                            tracing::warn!(function = %name, error = %e, "a saved idle-time histogram is unreadable; learning again")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not load idle-time histograms"),
        }
        spawn_histogram_saver(store.clone(), dataplane.clone());
        let worker_id = worker_id(&config)?;
        let cluster = match &config.advertise {
            None => None,
            Some(address) => {
                anyhow::ensure!(
                    store.backend() == petrel_store::Backend::Postgres,
                    "cluster mode (--advertise) needs a PostgreSQL store that every node shares: add --store postgres://..."
                );
                anyhow::ensure!(
                    address.starts_with("http://") || address.starts_with("https://"),
                    "--advertise {address:?} must be the URL other nodes reach this one at, like http://10.0.0.5:8080"
                );
                let id = config.node_id.clone().unwrap_or_else(|| worker_id.clone());
                petrel_core::name::validate_name("node id", &id)
                    .map_err(|e| anyhow::anyhow!("--node-id: {e}"))?;
                Some((id, address.clone()))
            }
        };
        let queue = petrel_async::AsyncQueue::new(
            store.clone(),
            petrel_async::AsyncConfig {
                worker_id: worker_id.clone(),
                retry_base: config.async_retry_base,
                idempotency_window: config.idempotency_window,
                retention: config.async_retention,
                dead_retention: config.dead_letter_retention,
                tls: Some(tls.clone()),
                ..Default::default()
            },
        );
        let dispatcher =
            petrel_async::Dispatcher::start(queue.clone(), Arc::new(dataplane.clone()))
                .await
                .context("could not start the async dispatcher")?;
        tracing::info!(worker = %worker_id, "async dispatcher started");
        let triggers = petrel_triggers::Triggers::start(
            store.clone(),
            dataplane.clone(),
            queue.clone(),
            petrel_async::http_client(Some(tls.clone())),
            petrel_triggers::TriggersConfig {
                retry_base: config.trigger_retry_base,
                reconnect_base: config.trigger_retry_base,
                worker_id: worker_id.clone(),
                ..Default::default()
            },
        )
        .await;
        tracing::info!(limits = env_status, "instance limits");
        tracing::info!(sandbox = sandbox_status, "process sandbox");
        tracing::info!(
            memory_budget_mib = config.memory_budget_mb,
            python_fork_server = prewarm.python_fork_server,
            node_standby = prewarm.node_standby,
            python_standby = prewarm.python_standby,
            process_standby = prewarm.process_standby,
            java_standby = prewarm.java_standby,
            "cold-start and capacity settings"
        );
        let jwt = config.jwt.clone().map(|j| {
            tracing::info!(issuer = %j.issuer, audience = ?j.audience, "invoke_auth = \"jwt\" accepts this issuer's tokens");
            Arc::new(jwt::JwtIssuer::new(
                j,
                petrel_async::http_client(Some(tls.clone())),
            ))
        });
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => {
                Some(tls::TlsFiles::open(cert, key).context("TLS on the listener")?)
            }
            (None, None) => None,
            _ => anyhow::bail!(
                "TLS needs both tls_cert_file and tls_key_file (--tls-cert and --tls-key)"
            ),
        };
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("could not listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        if !config.auth && !addr.ip().is_loopback() {
            anyhow::bail!(
                "--no-auth is refused on {addr}: without authentication anyone who reaches the port can deploy code; listen on 127.0.0.1 (or ::1), or leave authentication on"
            );
        }
        let master = auth::MasterKey::load(&config.data_dir, config.master_key_file.as_deref())?;
        let keys = auth::Keys::new(
            config.auth,
            store.clone(),
            master,
            &config.lambda_access_keys,
            jwt,
        );
        keys.bootstrap(&config.data_dir)
            .await
            .context("could not make the first owner key")?;
        for (ns, text) in store.all_quotas().await.context("could not read quotas")? {
            match serde_json::from_str(&text) {
                Ok(q) => dataplane.set_namespace_limits(&ns, api::invocation_limits(&q)),
                Err(e) => tracing::warn!(namespace = %ns, error = %e, "unreadable quotas ignored"),
            }
        }
        env.set_secret_source(Arc::new(auth::StoredSecrets {
            store: store.clone(),
            master: keys.master().clone(),
        }));
        if !config.auth {
            tracing::warn!(%addr, "authentication is off (--no-auth): anyone who reaches this loopback port is the owner");
        }
        tracing::info!(%addr, restored, store = ?store.backend(), data_dir = %config.data_dir.display(), "petrel started");
        let (control, doc) = api::routes().split_for_parts();
        let mut doc = doc;
        doc.merge(<petrel_gateway::ApiDoc as utoipa::OpenApi>::openapi());
        api::document_access(&mut doc);
        let app = App {
            store,
            artifacts,
            dataplane: dataplane.clone(),
            runtime: env,
            logs: hub,
            config: Arc::new(config),
            addr,
            queue,
            triggers,
            keys,
            openapi: Arc::new(doc.to_pretty_json().context("the OpenAPI document")?),
            // An advertised port 0 is the one the listener got.
            cluster: cluster.map(|(id, address)| {
                let address = match address.strip_suffix(":0") {
                    Some(host) => format!("{host}:{}", addr.port()),
                    None => address,
                };
                Arc::new(cluster::Cluster::new(id, address))
            }),
            worker_id: Arc::from(worker_id.as_str()),
            started_at: petrel_core::now_ms(),
        };
        cluster::join(&app, feed_start).await?;
        releases::spawn_driver(app.clone(), worker_id);
        let router = router(app.clone(), control);
        Ok(Self {
            listener,
            tls,
            router,
            app,
            log_writer,
            record_writer,
            dispatcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.app.addr
    }

    /// Where clients reach this server: `https://ADDR` with TLS, else `http://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.app.addr)
    }

    /// A token of the owner that this process alone knows (never stored), for what the
    /// process itself does through its API (`petrel serve --deploy`).
    pub fn local_token(&self) -> String {
        self.app.keys.local_token().to_owned()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// (up to the shutdown timeout), stops every instance and flushes the logs.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            tls,
            router,
            app,
            log_writer,
            record_writer,
            dispatcher,
        } = self;
        // Starting made many short-lived allocations (every version's row and parsed manifest,
        // the API's OpenAPI document, the routers) that the allocator would otherwise keep as
        // resident memory: with 10,000 functions deployed, about 0.8 KiB of each one's share
        // (bench/many_wasm.py; docs/performance.md).
        petrel_sandbox::release_free_heap();
        let grace = app.config.shutdown_timeout;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serve = match tls {
            Some(files) => {
                files.spawn_reloader();
                tracing::info!("TLS on the listener (HTTP/2 and HTTP/1.1 by ALPN)");
                tokio::spawn(tls::serve(listener, router, files, stop_rx.clone()))
            }
            None => {
                // Nagle's algorithm would hold an answer's last small write (a chunked body's final
                // chunk) until the client acknowledged the first, and clients delay that ACK by ~40 ms.
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
                    }
                });
                let serve = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown({
                    let mut stop_rx = stop_rx.clone();
                    async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    }
                });
                tokio::spawn(async move { serve.await })
            }
        };
        shutdown.await;
        if let Some(c) = &app.cluster {
            tracing::info!("stopping: telling the cluster to send no more work here");
            c.start_draining(&app).await;
        }
        tracing::info!(grace = ?grace, "stopping: finishing in-flight requests");
        // No new async work; what runs keeps its claim if it does not end in time, and this
        // server takes it back when it starts again.
        dispatcher.stop();
        let _ = stop_tx.send(true);
        // Triggers read no more; batches being invoked finish and commit within the grace.
        let triggers = {
            let t = app.triggers.clone();
            tokio::spawn(async move { t.stop(grace).await })
        };
        let deadline = std::time::Instant::now() + grace;
        match tokio::time::timeout(grace, serve).await {
            Ok(r) => r??,
            Err(_) => tracing::warn!(
                "in-flight requests did not finish within the shutdown timeout; stopping anyway"
            ),
        }
        // Async attempts are in-flight requests too: they get what is left of the grace.
        let left = dispatcher
            .drain(deadline.saturating_duration_since(std::time::Instant::now()))
            .await;
        let _ = triggers.await;
        if left > 0 {
            tracing::warn!(
                running = left,
                "async attempts still running at the shutdown timeout: they keep their claims and run again when this server starts"
            );
        }
        save_histograms(&app.store, &app.dataplane, &mut Saved::new()).await;
        if let Some(c) = &app.cluster {
            c.leave(&app).await;
        }
        app.dataplane.shutdown();
        app.runtime.stop_prewarmed();
        // Give the killed instances' processes a moment to leave their cgroups.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        app.runtime.remove_cgroups();
        let App {
            dataplane,
            runtime,
            store,
            ..
        } = app;
        drop((dataplane, runtime));
        // The last senders go with the data plane; let the writers drain what is queued.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let _ = record_writer.await;
            let _ = log_writer.await;
        })
        .await;
        store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Every route: the control API (with its document), the gateway, and AWS Lambda's API, with
/// Petrel's answers to unknown routes and methods.
fn router(app: App, control: Router<App>) -> Router {
    let gateway = petrel_gateway::Gateway {
        dataplane: app.dataplane.clone(),
        queue: app.queue.clone(),
        auth: Arc::new(app.keys.clone()),
    };
    let lambda = petrel_aws::LambdaApi {
        dataplane: app.dataplane.clone(),
        queue: app.queue.clone(),
        logs: app.runtime.log_sink().clone(),
        control: Arc::new(app.clone()),
    };
    let configured_keys = !app.config.lambda_access_keys.is_empty();
    let auth: Arc<dyn petrel_core::auth::Authenticator> = Arc::new(app.keys.clone());
    let routing = axum::middleware::from_fn_with_state(app.clone(), cluster::forward);
    Router::new()
        .merge(control.with_state(app))
        .merge(petrel_gateway::routes().with_state(gateway))
        .merge(petrel_aws::routes(lambda, auth, configured_keys))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(routing)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Sets up Petrel's own log: human-readable, or JSON lines with `json`.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
