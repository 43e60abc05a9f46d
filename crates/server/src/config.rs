//! Node configuration: what the deployment should be (the `--config` file) and how this process
//! runs (flags, which override the file). Unknown keys in the file are warned about, not refused.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `petrel serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    /// `sqlite://...` or `postgres://...`; `None` means SQLite under the data directory.
    pub store: Option<String>,
    pub payload_limit: usize,
    pub package_limit: usize,
    pub log_retention_lines: u32,
    pub log_retention: Duration,
    /// How long in-flight requests may take to finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// Where to export invocation spans as OTLP over HTTP (`http://collector:4318`).
    pub otlp_endpoint: Option<String>,
    /// Runtime processes kept ready for cold starts (the Python fork server, standby Node).
    pub prewarm: petrel_runtime::PrewarmConfig,
    /// The sum of `memory_mb` over live process instances stays under this (MiB).
    pub memory_budget_mb: u64,
    /// A cgroup per process instance (memory_mb enforced, a pids limit, CPU weight); used when
    /// Petrel can (as root), off only when asked.
    pub instance_limits: bool,
    /// The process sandbox (namespaces, a read-only root, an unprivileged user, seccomp), used
    /// when Petrel can (as root); off only when asked.
    pub sandbox: bool,
    /// Access keys the Lambda API (`/2015-03-31/...`) checks AWS Signature V4 against; none:
    /// requests are not authenticated.
    pub lambda_access_keys: Vec<petrel_aws::AccessKey>,
    /// Async mode: this server's name in claims (default: kept in the data directory), the first
    /// retry's delay, the idempotency window, and how long results and dead letters are kept.
    pub worker_id: Option<String>,
    pub async_retry_base: Duration,
    pub idempotency_window: Duration,
    pub async_retention: Duration,
    pub dead_letter_retention: Duration,
    /// Event triggers: the first pause before a failed batch is retried (and before a consumer
    /// connects again), doubling up to 30 s.
    pub trigger_retry_base: Duration,
    /// PEM certificates trusted for outbound HTTPS (callbacks and destinations) besides the
    /// system's: an internal CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Requests authenticate with API keys (off only with `--no-auth`, on loopback).
    pub auth: bool,
    /// The master key that seals secrets (default: `PETREL_MASTER_KEY`, else
    /// `DATA_DIR/master.key`).
    pub master_key_file: Option<PathBuf>,
    /// TLS on the listener: a PEM certificate chain and its private key, reloaded when they
    /// change or on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The issuer whose JWTs `invoke_auth = "jwt"` functions accept.
    pub jwt: Option<crate::jwt::JwtConfig>,
    /// Cluster mode: where the other nodes reach this one (`http://10.0.0.5:8080`). Nodes that
    /// share a PostgreSQL store and say where they are reachable are one cluster.
    pub advertise: Option<String>,
    /// This node's name in the cluster (default: the worker id).
    pub node_id: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".petrel"),
            listen: "127.0.0.1:8080".into(),
            store: None,
            payload_limit: petrel_core::DEFAULT_PAYLOAD_LIMIT,
            package_limit: 250 * 1024 * 1024,
            log_retention_lines: 10_000,
            log_retention: Duration::from_secs(7 * 24 * 3600),
            shutdown_timeout: Duration::from_secs(30),
            otlp_endpoint: None,
            prewarm: petrel_runtime::PrewarmConfig::default(),
            memory_budget_mb: parse_memory_budget("80%").unwrap_or(u64::MAX),
            instance_limits: true,
            sandbox: true,
            lambda_access_keys: Vec::new(),
            worker_id: None,
            async_retry_base: Duration::from_secs(1),
            idempotency_window: Duration::from_secs(24 * 3600),
            async_retention: Duration::from_secs(7 * 24 * 3600),
            dead_letter_retention: Duration::from_secs(14 * 24 * 3600),
            trigger_retry_base: Duration::from_secs(1),
            tls_ca_file: None,
            auth: true,
            master_key_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            jwt: None,
            advertise: None,
            node_id: None,
        }
    }
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub payload_limit_mb: Option<usize>,
    pub package_limit_mb: Option<usize>,
    pub log_retention_lines: Option<u32>,
    pub log_retention: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub python_fork_server: Option<bool>,
    pub node_standby: Option<usize>,
    pub python_standby: Option<usize>,
    pub process_standby: Option<usize>,
    pub java_standby: Option<usize>,
    pub memory_budget: Option<String>,
    pub instance_limits: Option<bool>,
    pub sandbox: Option<bool>,
    pub lambda_access_keys: Option<Vec<LambdaKey>>,
    pub worker_id: Option<String>,
    pub async_retry_base: Option<String>,
    pub idempotency_window: Option<String>,
    pub async_retention: Option<String>,
    pub dead_letter_retention: Option<String>,
    pub trigger_retry_base: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub master_key_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub jwt: Option<JwtTable>,
    pub advertise: Option<String>,
    pub node_id: Option<String>,
}

/// The `[jwt]` table: the issuer `invoke_auth = "jwt"` functions trust.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtTable {
    pub issuer: String,
    pub jwks_url: Option<String>,
    pub audience: Audience,
    pub clock_skew: Option<String>,
}

/// One audience or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl JwtTable {
    fn check(self) -> anyhow::Result<crate::jwt::JwtConfig> {
        let url = |u: &str, key: &str| {
            anyhow::ensure!(
                u.starts_with("https://") || u.starts_with("http://"),
                "[jwt] {key} = {u:?} must be an http:// or https:// URL"
            );
            Ok(())
        };
        url(&self.issuer, "issuer")?;
        if let Some(j) = &self.jwks_url {
            url(j, "jwks_url")?;
        }
        let audience = match self.audience {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
        };
        anyhow::ensure!(
            !audience.is_empty() && audience.iter().all(|a| !a.is_empty()),
            "[jwt] audience must name at least one audience (the `aud` your issuer puts in tokens for Petrel)"
        );
        let clock_skew = match &self.clock_skew {
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("[jwt] clock_skew = {s:?} is not a duration: {e}"))?,
            None => std::time::Duration::from_secs(60),
        };
        Ok(crate::jwt::JwtConfig {
            issuer: self.issuer,
            jwks_url: self.jwks_url,
            audience,
            clock_skew,
        })
    }
}

/// One `[[lambda_access_keys]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaKey {
    pub id: String,
    pub secret: String,
}

const KNOWN_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store",
    "payload_limit_mb",
    "package_limit_mb",
    "log_retention_lines",
    "log_retention",
    "shutdown_timeout",
    "otlp_endpoint",
    "python_fork_server",
    "node_standby",
    "python_standby",
    "process_standby",
    "java_standby",
    "memory_budget",
    "instance_limits",
    "sandbox",
    "lambda_access_keys",
    "worker_id",
    "advertise",
    "node_id",
    "async_retry_base",
    "idempotency_window",
    "async_retention",
    "dead_letter_retention",
    "trigger_retry_base",
    "tls_ca_file",
    "master_key_file",
    "tls_cert_file",
    "tls_key_file",
    "jwt",
];

impl ConfigFile {
    /// Reads a config file; returns it with warnings about keys it does not know.
    pub fn load(path: &std::path::Path) -> anyhow::Result<(Self, Vec<String>)> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let warnings = table
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|k| {
                format!(
                    "{}: unknown key `{k}` ignored (known: {})",
                    path.display(),
                    KNOWN_KEYS.join(", ")
                )
            })
            .collect();
        let file: ConfigFile = toml::from_str(&text)
            .with_context(|| format!("{} has an invalid value", path.display()))?;
        Ok((file, warnings))
    }

    /// Applies the file's settings over `base`.
    pub fn apply(self, mut base: ServeConfig) -> anyhow::Result<ServeConfig> {
        let dur = |s: &str, key: &str| {
            humantime::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("{key} = {s:?} is not a duration: {e}"))
        };
        if let Some(v) = self.listen {
            base.listen = v;
        }
        if let Some(v) = self.data_dir {
            base.data_dir = v;
        }
        if let Some(v) = self.master_key_file {
            base.master_key_file = Some(v);
        }
        if let Some(v) = self.tls_cert_file {
            base.tls_cert_file = Some(v);
        }
        if let Some(v) = self.tls_key_file {
            base.tls_key_file = Some(v);
        }
        if let Some(v) = self.jwt {
            base.jwt = Some(v.check()?);
        }
        if let Some(v) = self.store {
            base.store = Some(v);
        }
        if let Some(v) = self.payload_limit_mb {
            base.payload_limit = v * 1024 * 1024;
        }
        if let Some(v) = self.package_limit_mb {
            base.package_limit = v * 1024 * 1024;
        }
        if let Some(v) = self.log_retention_lines {
            base.log_retention_lines = v;
        }
        if let Some(v) = self.log_retention {
            base.log_retention = dur(&v, "log_retention")?;
        }
        if let Some(v) = self.otlp_endpoint {
            base.otlp_endpoint = Some(v);
        }
        if let Some(v) = self.python_fork_server {
            base.prewarm.python_fork_server = v;
        }
        if let Some(v) = self.node_standby {
            base.prewarm.node_standby = v;
        }
        if let Some(v) = self.python_standby {
            base.prewarm.python_standby = v;
        }
        if let Some(v) = self.process_standby {
            base.prewarm.process_standby = v;
        }
        if let Some(v) = self.java_standby {
            base.prewarm.java_standby = v;
        }
        if let Some(v) = self.instance_limits {
            base.instance_limits = v;
        }
        if let Some(v) = self.sandbox {
            base.sandbox = v;
        }
        if let Some(keys) = self.lambda_access_keys {
            base.lambda_access_keys = keys
                .into_iter()
                .map(|k| petrel_aws::AccessKey {
                    id: k.id,
                    secret: k.secret,
                })
                .collect();
        }
        if let Some(v) = self.memory_budget {
            base.memory_budget_mb = parse_memory_budget(&v)?;
        }
        if let Some(v) = self.worker_id {
            base.worker_id = Some(v);
        }
        if let Some(v) = self.advertise {
            base.advertise = Some(v);
        }
        if let Some(v) = self.node_id {
            base.node_id = Some(v);
        }
        if let Some(v) = self.tls_ca_file {
            base.tls_ca_file = Some(v);
        }
        for (v, key, field) in [
            (
                self.async_retry_base,
                "async_retry_base",
                &mut base.async_retry_base,
            ),
            (
                self.trigger_retry_base,
                "trigger_retry_base",
                &mut base.trigger_retry_base,
            ),
            (
                self.idempotency_window,
                "idempotency_window",
                &mut base.idempotency_window,
            ),
            (
                self.async_retention,
                "async_retention",
                &mut base.async_retention,
            ),
            (
                self.dead_letter_retention,
                "dead_letter_retention",
                &mut base.dead_letter_retention,
            ),
        ] {
            if let Some(v) = v {
                *field = dur(&v, key)?;
            }
        }
        if let Some(v) = self.shutdown_timeout {
            base.shutdown_timeout = dur(&v, "shutdown_timeout")?;
        }
        Ok(base)
    }
}

/// A memory budget in MiB from `80%` (of this machine's memory), `512MiB`, `8GiB` or a bare
/// number of MiB.
pub fn parse_memory_budget(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let bad = || {
        anyhow::anyhow!(
            "memory budget {s:?} is not a size: use a percentage of this machine's memory (80%), MiB (512MiB) or GiB (8GiB)"
        )
    };
    if let Some(p) = t.strip_suffix('%') {
        let pct: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&pct) || pct == 0.0 {
            return Err(bad());
        }
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .ok_or_else(|| {
                anyhow::anyhow!("could not read this machine's memory from /proc/meminfo; give the budget in MiB or GiB")
            })?;
        return Ok(((total_kib as f64 / 1024.0) * pct / 100.0) as u64);
    }
    let lower = t.to_ascii_lowercase();
    let (num, mult) = [
        ("gib", 1024.0),
        ("gb", 1024.0),
        ("g", 1024.0),
        ("mib", 1.0),
        ("mb", 1.0),
        ("m", 1.0),
    ]
    .iter()
    .find_map(|(suffix, m)| {
        lower
            .strip_suffix(suffix)
            .map(|n| (n.trim().to_owned(), *m))
    })
    .unwrap_or((lower.clone(), 1.0));
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n <= 0.0 {
        return Err(bad());
    }
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_apply_and_unknown_keys_warn() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("petrel-node.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:9999\"\npayload_limit_mb = 1\nlog_retention = \"1h\"\nlisten_port = 3\n").unwrap();
        let (file, warnings) = ConfigFile::load(&p).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("listen_port"));
        let cfg = file.apply(ServeConfig::default()).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9999");
        assert_eq!(cfg.payload_limit, 1024 * 1024);
        assert_eq!(cfg.log_retention, Duration::from_secs(3600));
    }

    #[test]
    fn the_jwt_table_is_checked() {
        let apply = |text: &str| -> anyhow::Result<ServeConfig> {
            let file: ConfigFile = toml::from_str(text)?;
            file.apply(ServeConfig::default())
        };
        let j = apply("[jwt]\nissuer = \"https://id.example\"\naudience = \"petrel\"\n")
            .unwrap()
            .jwt
            .unwrap();
        assert_eq!(j.audience, ["petrel"]);
        assert_eq!(j.clock_skew, std::time::Duration::from_secs(60));
        assert!(j.jwks_url.is_none());
        let j = apply("[jwt]\nissuer = \"https://id.example\"\naudience = [\"a\", \"b\"]\njwks_url = \"https://id.example/k\"\nclock_skew = \"5s\"\n")
            .unwrap()
            .jwt
            .unwrap();
        assert_eq!(j.audience, ["a", "b"]);
        assert_eq!(j.clock_skew, std::time::Duration::from_secs(5));
        for (bad, says) in [
            ("issuer = \"id.example\"\naudience = \"a\"", "issuer"),
            ("issuer = \"https://i\"\naudience = []", "audience"),
            (
                "issuer = \"https://i\"\naudience = \"a\"\njwks_url = \"file:///k\"",
                "jwks_url",
            ),
            (
                "issuer = \"https://i\"\naudience = \"a\"\nclock_skew = \"soon\"",
                "clock_skew",
            ),
        ] {
            let e = apply(&format!("[jwt]\n{bad}\n")).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // No audience at all is not a valid table.
        assert!(toml::from_str::<ConfigFile>("[jwt]\nissuer = \"https://i\"\n").is_err());
    }

    #[test]
    fn memory_budgets_parse_in_every_documented_form() {
        assert_eq!(parse_memory_budget("512").unwrap(), 512);
        assert_eq!(parse_memory_budget("512MiB").unwrap(), 512);
        assert_eq!(parse_memory_budget("2GiB").unwrap(), 2048);
        assert_eq!(parse_memory_budget("1.5g").unwrap(), 1536);
        let all = parse_memory_budget("100%").unwrap();
        let most = parse_memory_budget("80%").unwrap();
        assert!(most < all && most > all / 2, "{most} of {all}");
        for bad in ["", "lots", "-3GiB", "0%", "120%"] {
            let e = parse_memory_budget(bad).unwrap_err().to_string();
            assert!(e.contains("not a size"), "{bad}: {e}");
        }
    }
}
