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
        if let Some(v) = self.shutdown_timeout {
            base.shutdown_timeout = dur(&v, "shutdown_timeout")?;
        }
        Ok(base)
    }
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
}
