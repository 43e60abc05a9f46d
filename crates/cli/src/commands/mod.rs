//! One module per command of `petrel`: its arguments and what it does. `serve` runs the
//! platform; the others are clients of its HTTP API.

pub(crate) mod audit;
pub(crate) mod build;
pub(crate) mod deploy;
pub(crate) mod dlq;
pub(crate) mod get;
pub(crate) mod inv;
pub(crate) mod invoke;
pub(crate) mod key;
pub(crate) mod logs;
pub(crate) mod ls;
pub(crate) mod new;
pub(crate) mod nodes;
pub(crate) mod ns;
pub(crate) mod profile;
pub(crate) mod release;
pub(crate) mod rm;
pub(crate) mod secret;
pub(crate) mod serve;
pub(crate) mod sim;
pub(crate) mod sim_cluster;
pub mod top;
pub(crate) mod trigger;
pub(crate) mod usage;

/// `?namespace=NS`, or nothing.
pub(crate) fn ns_query(ns: &Option<String>) -> String {
    ns.as_ref()
        .map(|n| format!("?namespace={n}"))
        .unwrap_or_default()
}

/// A time (ms since the epoch) as `2026-11-26 11:02:58` (UTC).
pub(crate) fn format_ts(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

/// Writes a body to standard output, ending it with a newline.
pub(crate) fn print_body(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(())
}
