//! Cluster mode: nodes on one PostgreSQL store acting as one system.
//!
//! - **Membership**: each node writes a heartbeat every second (state, address, load, the
//!   functions that need more homes) and reads everyone's; a node silent for
//!   [`HEARTBEAT_TIMEOUT`] is out. The live nodes, hashed once, make the [`Ring`] every node
//!   places requests with.
//! - **Changes**: a deploy, delete, alias or trigger change or quota update appends to the
//!   store's change feed (announced by NOTIFY); every node follows the feed and applies what the
//!   others did (reload the function, drop its cached aliases, reconcile its triggers), with a
//!   poll that catches up after a lost connection.
//! - **Packages** are kept in the store as well as on the deploying node's disk; a node that
//!   lacks one fetches it by digest and caches it.
//! - **Routing**: [`forward`] sends a synchronous invocation to its function's home (rendezvous
//!   order, bounded load) unless this node is it; one hop at most, by a header.

use crate::App;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use petrel_core::cluster::{
    place, stable_hash, LoadBound, NodeInfo, NodeState, Ring, FORWARDED_HEADER,
};
use petrel_core::{ApiError, ErrorCode};
use petrel_store::{ArtifactStore, Heartbeat, Store};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a node writes its heartbeat and reads the others'.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is out: its functions go to their next homes.
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the change feed is read when no announcement came.
const POLL: Duration = Duration::from_secs(1);
/// Changes may commit out of id order (concurrent writers): the follower rereads this many ids
/// below the newest it saw, and skips those it applied.
const REREAD: i64 = 64;
/// Changes and silent nodes are forgotten after this long.
const RETENTION: Duration = Duration::from_secs(3600);
/// Bodies up to this size are read before forwarding, so that a home found dead can be
/// replaced by serving here; longer ones stream through.
const BUFFER_UNDER: u64 = 256 * 1024;
/// The header naming the node that served a request.
pub(crate) const NODE_HEADER: &str = "x-petrel-node";
/// A forwarded request carries the function's latest version as the forwarding node knows it:
/// a home that has not applied that deploy yet loads it before serving.
const LATEST_HEADER: &str = "x-petrel-forwarded-latest";

/// The change kinds of the feed.
pub(crate) mod kind {
    pub const FUNCTION: &str = "function";
    pub const ALIAS: &str = "alias";
    pub const QUOTAS: &str = "quotas";
}

type ForwardClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// What a node knows of the cluster at its last heartbeat.
#[derive(Debug, Default)]
struct View {
    /// Live nodes, by id.
    nodes: Vec<NodeInfo>,
    ring: Ring,
    /// Functions reported hot, with how many nodes report them.
    hot: HashMap<String, usize>,
}

/// This node's part in the cluster.
pub(crate) struct Cluster {
    pub node_id: String,
    pub address: String,
    started_at: i64,
    view: RwLock<Arc<View>>,
    /// Nodes a forward could not reach, kept out of placement until then.
    suspects: Mutex<HashMap<String, Instant>>,
    draining: AtomicBool,
    /// Stopped: the last heartbeat says so, and no later one may say otherwise.
    left: AtomicBool,
    client: ForwardClient,
    bound: LoadBound,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub(crate) fn new(node_id: String, address: String) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
        Self {
            node_id,
            address: address.trim_end_matches('/').to_owned(),
            started_at: petrel_core::now_ms(),
            view: RwLock::default(),
            suspects: Mutex::default(),
            draining: AtomicBool::new(false),
            left: AtomicBool::new(false),
            client,
            bound: LoadBound::default(),
        }
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap().clone()
    }

    fn heartbeat(&self, app: &App) -> Heartbeat {
        let (in_flight, instances, hot) = local_load(&app.dataplane);
        let budget = app.dataplane.memory_budget();
        Heartbeat {
            node_id: self.node_id.clone(),
            address: self.address.clone(),
            petrel_version: env!("CARGO_PKG_VERSION").to_owned(),
            state: if self.left.load(Ordering::Relaxed) {
                NodeState::Left
            } else if self.draining.load(Ordering::Relaxed) {
                NodeState::Draining
            } else {
                NodeState::Up
            },
            started_at: self.started_at,
            in_flight,
            instances,
            memory_used_mb: budget.used_mb(),
            memory_limit_mb: budget.limit_mb(),
            hot,
        }
    }

    /// Writes this node's heartbeat and reads the cluster's.
    async fn beat(&self, app: &App) -> Result<(), petrel_store::StoreError> {
        app.store.heartbeat(&self.heartbeat(app)).await?;
        let mut nodes = app.store.nodes().await?;
        let timeout = HEARTBEAT_TIMEOUT.as_millis() as u64;
        nodes.retain(|n| n.is_live(timeout));
        let mut hot: HashMap<String, usize> = HashMap::new();
        for n in &nodes {
            for f in &n.hot {
                *hot.entry(f.clone()).or_default() += 1;
            }
        }
        let ring = Ring::new(nodes.iter().map(|n| n.id.as_str()));
        *self.view.write().unwrap() = Arc::new(View { nodes, ring, hot });
        Ok(())
    }

    /// Every node the store knows, the silent ones shown as out.
    pub(crate) async fn nodes(&self, store: &Store) -> Result<Vec<NodeInfo>, ApiError> {
        let timeout = HEARTBEAT_TIMEOUT.as_millis() as u64;
        let mut nodes = store.nodes().await?;
        for n in &mut nodes {
            if n.state != NodeState::Left && n.heartbeat_age_ms > timeout {
                n.state = NodeState::Out;
            }
        }
        Ok(nodes)
    }

    /// Where a request for `key` (`namespace/name`) goes: `None` is here.
    fn home_of(&self, key: &str) -> Option<NodeInfo> {
        let view = self.view();
        if view.nodes.len() < 2 {
            return None;
        }
        let suspects: Vec<usize> = {
            let mut s = self.suspects.lock().unwrap();
            s.retain(|_, until| *until > Instant::now());
            view.nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| s.contains_key(&n.id))
                .map(|(i, _)| i)
                .collect()
        };
        let n = view.nodes.len();
        let mut order = view.ring.rank(stable_hash(key), n);
        order.retain(|i| !suspects.contains(i));
        let load: Vec<u64> = view.nodes.iter().map(|n| n.in_flight).collect();
        let total: u64 = load.iter().sum();
        let limit = self.bound.limit(total, n);
        let homes = 1 + view.hot.get(key).copied().unwrap_or(0);
        let chosen = place(&order, &load, limit, homes)?;
        let node = &view.nodes[chosen];
        (node.id != self.node_id).then(|| node.clone())
    }

    /// Why this node should get no traffic yet (or any more), if so.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some(
                "this node is draining: it finishes what it runs and takes nothing new".into(),
            );
        }
        let view = self.view();
        (!view.nodes.iter().any(|n| n.id == self.node_id)).then(|| {
            format!(
                "node {} has not seen its own heartbeat in the store yet: it has not joined the cluster",
                self.node_id
            )
        })
    }

    fn suspect(&self, node: &str) {
        self.suspects
            .lock()
            .unwrap()
            .insert(node.to_owned(), Instant::now() + HEARTBEAT_TIMEOUT * 2);
    }

    /// Drain: tell the others to stop sending work here, and give them a heartbeat to see it.
    pub(crate) async fn start_draining(&self, app: &App) {
        self.draining.store(true, Ordering::Relaxed);
        if let Err(e) = self.beat(app).await {
            tracing::warn!(error = %e, "cluster: could not announce the drain");
        }
        tokio::time::sleep(HEARTBEAT + Duration::from_millis(200)).await;
    }

    /// The node stopped: its heartbeat says so, and the others move on at once.
    pub(crate) async fn leave(&self, app: &App) {
        self.left.store(true, Ordering::Relaxed);
        if let Err(e) = app.store.heartbeat(&self.heartbeat(app)).await {
            tracing::warn!(error = %e, "cluster: could not record leaving");
        }
    }
}

/// This node's invocations in flight (running or waiting), its instances, and the functions
/// with callers waiting for an instance (`namespace/name`).
pub(crate) fn local_load(dp: &petrel_dataplane::DataPlane) -> (u64, u64, Vec<String>) {
    let (mut in_flight, mut instances) = (0u64, 0u64);
    let mut hot = BTreeSet::new();
    for (ns, name, _, s) in dp.pool_stats() {
        in_flight += u64::from(s.in_flight) + s.waiting as u64;
        instances += (s.ready + s.starting) as u64;
        if s.waiting > 0 {
            hot.insert(format!("{ns}/{name}"));
        }
    }
    (in_flight, instances, hot.into_iter().collect())
}

/// Joins the cluster (first heartbeat, so that placement knows this node before it serves) and
/// keeps beating and following changes.
pub(crate) async fn join(app: &App, start: i64) -> anyhow::Result<()> {
    let Some(cluster) = app.cluster.clone() else {
        return Ok(());
    };
    cluster
        .beat(app)
        .await
        .map_err(|e| anyhow::anyhow!("could not join the cluster: {e}"))?;
    let nodes = cluster.view().nodes.len();
    tracing::info!(node = %cluster.node_id, address = %cluster.address, live_nodes = nodes, "joined the cluster");
    let beater = app.clone();
    tokio::spawn(async move {
        let mut last_prune = Instant::now();
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(e) = cluster.beat(&beater).await {
                tracing::warn!(error = %e, "cluster: heartbeat failed; retrying");
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = Instant::now();
                let before = petrel_core::now_ms() - RETENTION.as_millis() as i64;
                let _ = beater.store.prune_changes(before).await;
                let _ = beater.store.forget_nodes(before).await;
            }
        }
    });
    let wakes = app.store.change_wakes().await?;
    let follower = app.clone();
    tokio::spawn(async move { follow(follower, start, wakes).await });
    Ok(())
}

/// Applies the others' changes as they come.
async fn follow(app: App, start: i64, mut wakes: Option<tokio::sync::watch::Receiver<u64>>) {
    let me = app
        .cluster
        .as_ref()
        .map(|c| c.node_id.clone())
        .unwrap_or_default();
    let mut newest = start;
    let mut applied: BTreeSet<i64> = BTreeSet::new();
    loop {
        match app
            .store
            .changes_after((newest - REREAD).max(0), 1000)
            .await
        {
            Ok(changes) => {
                for c in changes {
                    newest = newest.max(c.id);
                    if c.id <= start || !applied.insert(c.id) || c.origin == me {
                        continue;
                    }
                    tracing::debug!(kind = %c.kind, namespace = %c.namespace, name = %c.name, origin = %c.origin, "cluster: applying a change");
                    apply(&app, &c.kind, &c.namespace, &c.name).await;
                }
                applied = applied.split_off(&(newest - REREAD));
            }
            Err(e) => tracing::warn!(error = %e, "cluster: could not read the change feed"),
        }
        match &mut wakes {
            Some(rx) => {
                let _ = tokio::time::timeout(POLL, rx.changed()).await;
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// Makes this node serve what another node changed.
async fn apply(app: &App, kind: &str, ns: &str, name: &str) {
    match kind {
        kind::FUNCTION => {
            if let Err(e) = reload_function(app, ns, name).await {
                tracing::warn!(namespace = %ns, function = %name, error = %e, "cluster: could not load a changed function");
            }
            app.dataplane.alias_changed(ns, name);
            app.triggers.reconcile_function(ns, name).await;
        }
        kind::ALIAS => app.dataplane.alias_changed(ns, name),
        kind::QUOTAS => app.reload_quotas(ns).await,
        other => tracing::debug!(
            kind = other,
            "cluster: a change of a kind this node does not know"
        ),
    }
}

/// Serves a function's latest version as the store has it (or stops serving a deleted one).
async fn reload_function(app: &App, ns: &str, name: &str) -> anyhow::Result<()> {
    let Some(f) = app.store.get_function(ns, name).await? else {
        app.dataplane.removed(ns, name);
        return Ok(());
    };
    if app.dataplane.latest_version(ns, name) == Some(f.latest_version) {
        return Ok(());
    }
    let Some(v) = app.store.get_version(ns, name, f.latest_version).await? else {
        return Ok(());
    };
    let code_dir = code_for(&app.store, &app.artifacts, &v.digest).await?;
    // As a deploy here would, before the function's first request reaches this node.
    app.runtime
        .prepare_in_background(v.spec.runtime, v.spec.memory_mb);
    app.dataplane.deployed(petrel_dataplane::DeployedVersion {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        version: v.version,
        digest: v.digest,
        spec: Arc::new(v.spec),
        code_dir,
    });
    tracing::info!(namespace = %ns, function = %name, version = f.latest_version, "cluster: serving a version deployed on another node");
    Ok(())
}

/// The unpacked code of a package: from this node's disk, else fetched from the store (checked
/// against its digest) and cached here.
pub(crate) async fn code_for(
    store: &Store,
    artifacts: &ArtifactStore,
    digest: &str,
) -> anyhow::Result<PathBuf> {
    if artifacts.package_path(digest).is_file() || artifacts.code_dir(digest).is_dir() {
        let (artifacts, digest) = (artifacts.clone(), digest.to_owned());
        return Ok(tokio::task::spawn_blocking(move || artifacts.ensure_unpacked(&digest)).await??);
    }
    let Some(bytes) = store.get_package(digest).await? else {
        anyhow::bail!(
            "package {digest} is on no node's disk this node can read and not in the store; deploy the function again"
        );
    };
    let artifacts = artifacts.clone();
    let digest = digest.to_owned();
    tokio::task::spawn_blocking(move || {
        let got = artifacts.put_package(&bytes)?;
        anyhow::ensure!(
            got == digest,
            "the stored package {digest} does not match its digest"
        );
        Ok(artifacts.code_dir(&digest))
    })
    .await?
}

/// The function a gateway path invokes synchronously, as `namespace/name`.
fn invoked_function(uri: &Uri) -> Option<String> {
    let path = uri.path();
    let rest = path.strip_prefix("/fn/").or_else(|| {
        path.strip_prefix("/v1/functions/")
            .filter(|r| r.ends_with("/invoke"))
    })?;
    let name = rest.split('/').next()?;
    let name = name.split(':').next()?;
    if name.is_empty() {
        return None;
    }
    let ns = uri
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("namespace="))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| petrel_core::DEFAULT_NAMESPACE.to_owned());
    if path.starts_with("/v1/") && uri.query().is_some_and(|q| q.contains("async=")) {
        // Queued, not run here: any node accepts it.
        let asynchronous = uri.query().unwrap_or_default().split('&').any(|kv| {
            kv.strip_prefix("async=")
                .is_some_and(|v| v != "false" && v != "0")
        });
        if asynchronous {
            return None;
        }
    }
    Some(format!("{ns}/{name}"))
}

/// Headers that belong to one connection, not to the request: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The routing layer: a synchronous invocation whose function's home is another node goes
/// there (one hop: a forwarded request is served where it lands); everything else is served
/// here. Every answer names the node that served it.
pub(crate) async fn forward(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(cluster) = app.cluster.clone() else {
        return next.run(req).await;
    };
    let function = invoked_function(req.uri());
    if let Some(key) = &function {
        let (ns, name) = key.split_once('/').expect("namespace/name");
        if app.dataplane.latest_version(ns, name).is_none() {
            // Deployed on another node a moment ago, its change not applied here yet: the store
            // says (one read for a name this node does not serve).
            if let Err(e) = reload_function(&app, ns, name).await {
                tracing::warn!(namespace = %ns, function = %name, error = %e, "cluster: could not look a function up in the store");
            }
        }
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        // The forwarding node knew a newer version than this one serves: it was deployed a
        // moment ago and its change is on its way here; read it now instead of answering with
        // the old one (or none).
        let theirs = req
            .headers()
            .get(LATEST_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        if let (Some(theirs), Some(key)) = (theirs, &function) {
            let (ns, name) = key.split_once('/').expect("namespace/name");
            if app
                .dataplane
                .latest_version(ns, name)
                .is_none_or(|v| v < theirs)
            {
                if let Err(e) = reload_function(&app, ns, name).await {
                    tracing::warn!(namespace = %ns, function = %name, error = %e, "cluster: could not load a version a forwarded request names");
                }
            }
        }
    }
    let target = if req.headers().contains_key(FORWARDED_HEADER)
        || cluster.draining.load(Ordering::Relaxed)
    {
        None
    } else {
        function.as_ref().and_then(|key| {
            let (ns, name) = key.split_once('/').expect("namespace/name");
            // A function the store does not know either is answered here, as unknown.
            let latest = app.dataplane.latest_version(ns, name)?;
            Some((cluster.home_of(key)?, latest))
        })
    };
    let mut resp = match target {
        None => next.run(req).await,
        Some((home, latest)) => match send(&cluster, &home, latest, req).await {
            Ok(resp) => return resp,
            Err(Unsent::Again(req)) => next.run(req).await,
            Err(Unsent::Lost(e)) => e.into_response(),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&cluster.node_id) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    resp
}

/// Why a forward did not answer.
enum Unsent {
    /// The home could not be reached and the request is whole: serve it here.
    Again(Request),
    /// The home could not be reached after a streamed body went out.
    Lost(petrel_gateway::ErrorResponse),
}

async fn send(
    cluster: &Cluster,
    home: &NodeInfo,
    latest: u32,
    req: Request,
) -> Result<Response, Unsent> {
    let (parts, body) = req.into_parts();
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= BUFFER_UNDER)
        || (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
            && !parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut streamed = None;
    let buffered = if small {
        match axum::body::to_bytes(body, BUFFER_UNDER as usize).await {
            Ok(b) => Some(b),
            Err(e) => {
                return Err(Unsent::Lost(
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("the request body could not be read: {e}"),
                    )
                    .into(),
                ))
            }
        }
    } else {
        streamed = Some(body);
        None
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = match format!("{}{path}", home.address).parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(node = %home.id, address = %home.address, error = %e, "cluster: a node advertises an unusable address");
            cluster.suspect(&home.id);
            return Err(again(parts, buffered));
        }
    };
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(http::Version::HTTP_11);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    out = out
        .header(FORWARDED_HEADER, cluster.node_id.as_str())
        .header(LATEST_HEADER, latest);
    let body = match &buffered {
        Some(b) => Body::from(b.clone()),
        None => streamed.take().unwrap_or_else(Body::empty),
    };
    let out = out.body(body).expect("a request copied from a valid one");
    match cluster.client.request(out).await {
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            // The home's connection headers are not the caller's connection's.
            let names: Vec<HeaderName> = p
                .headers
                .keys()
                .filter(|k| hop_by_hop(k))
                .cloned()
                .collect();
            for n in names {
                p.headers.remove(n);
            }
            Ok(Response::from_parts(p, Body::new(b)))
        }
        Err(e) => {
            tracing::warn!(node = %home.id, error = %e, "cluster: could not forward to a function's home; serving here and keeping that node out of placement for a while");
            cluster.suspect(&home.id);
            if buffered.is_some() {
                Err(again(parts, buffered))
            } else {
                Err(Unsent::Lost(
                    ApiError::new(
                        ErrorCode::NoCapacity,
                        format!(
                            "node {} that serves this function could not be reached while the request streamed to it; retry",
                            home.id
                        ),
                    )
                    .with_retry_after(1)
                    .into(),
                ))
            }
        }
    }
}

fn again(parts: http::request::Parts, buffered: Option<bytes::Bytes>) -> Unsent {
    Unsent::Again(Request::from_parts(
        parts,
        buffered.map(Body::from).unwrap_or_else(Body::empty),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invoked_function_is_read_from_the_gateway_paths() {
        let f = |s: &str| invoked_function(&s.parse().unwrap());
        assert_eq!(f("/fn/hello/"), Some("default/hello".into()));
        assert_eq!(
            f("/fn/hello:prod/x/y?namespace=team"),
            Some("team/hello".into())
        );
        assert_eq!(
            f("/v1/functions/hello/invoke"),
            Some("default/hello".into())
        );
        assert_eq!(f("/v1/functions/hello/invoke?async=true"), None);
        assert_eq!(
            f("/v1/functions/hello/invoke?async=false"),
            Some("default/hello".into())
        );
        assert_eq!(f("/v1/functions/hello"), None);
        assert_eq!(f("/async-fn/hello/"), None);
        assert_eq!(f("/fn/"), None);
    }
}
