//! An object storage trigger: object-created and object-removed events of a bucket on any
//! S3-compatible store, to a function in Lambda's S3 event shape.
//!
//! Two ways in. `poll`: Petrel lists the bucket (`ListObjectsV2`, signed with SigV4) every
//! `poll_interval` against a watermark kept in its store: the newest `LastModified` seen and the
//! objects seen within a look-back before it (an upload that started before a listing and ended
//! after it carries the earlier time), so an object is delivered once per version (key and
//! ETag). The watermark moves only once the objects before it are settled. Removals, in poll
//! mode, are what a listing lacks that the previous one (on this server, since it started) had.
//! `notify`: the store POSTs its own event notifications (S3's format) to Petrel's webhook route,
//! authenticated by the trigger's secret; the answer comes once the records are settled, so a
//! store that retries until it gets a 2xx loses nothing.

use crate::batch::{Record, RecordMeta};
use crate::events::Origin;
use crate::lanes::{self, Lane};
use crate::{RunState, TriggerRun};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use petrel_core::trigger::{S3Mode, S3Source};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Objects last modified this long before the watermark are looked at again.
const LOOK_BACK_MS: i64 = 60_000;
const REGION: &str = "us-east-1";

/// A webhook delivery waiting for its records to be settled.
pub(crate) struct Intake {
    pub records: Vec<Record>,
    pub done: oneshot::Sender<()>,
}

pub(crate) async fn run(run: Arc<TriggerRun>, src: S3Source, stop: watch::Receiver<bool>) {
    match src.mode {
        S3Mode::Poll => crate::supervise(&run, stop, |stop| poll(&run, &src, stop)).await,
        S3Mode::Notify => notify(&run, &src, stop).await,
    }
}

/// An endpoint's parts: the base URL without credentials, the host header, the keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub base: String,
    pub host: String,
    pub access_key: String,
    pub secret_key: String,
}

pub(crate) fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "the endpoint is not a URL".to_owned())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (creds, host) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (access_key, secret_key) = match creds.and_then(|c| c.split_once(':')) {
        Some((a, s)) => (pct_decode(a), pct_decode(s)),
        None => {
            return Err(
                "the endpoint has no keys: write http://ACCESS_KEY:SECRET_KEY@host:port".into(),
            )
        }
    };
    Ok(Endpoint {
        base: format!("{scheme}://{host}{path}"),
        host: host.to_owned(),
        access_key,
        secret_key,
    })
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// SigV4's URI encoding: unreserved characters as they are, everything else `%XX`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A signed GET of `path` with `query` (AWS Signature Version 4, path-style).
pub(crate) fn signed_get(
    ep: &Endpoint,
    path: &str,
    query: &[(&str, &str)],
    now: chrono::DateTime<chrono::Utc>,
) -> http::Request<Full<Bytes>> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let day = now.format("%Y%m%d").to_string();
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let base_path = ep
        .base
        .split_once("://")
        .map_or("", |(_, r)| r.find('/').map_or("", |i| &r[i..]));
    let full_path = uri_encode(&format!("{base_path}{path}"), true);
    let payload = hex::encode(Sha256::digest(b""));
    let canonical = format!(
        "GET\n{full_path}\n{canonical_query}\nhost:{}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}",
        ep.host
    );
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", ep.secret_key).as_bytes(), &day);
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac(&key, part);
    }
    let signature = hex::encode(hmac(&key, &to_sign));
    let scheme_host = ep.base.split_once("://").map_or(ep.base.clone(), |(s, r)| {
        format!("{s}://{}", r.split('/').next().unwrap_or(r))
    });
    let uri = if canonical_query.is_empty() {
        format!("{scheme_host}{full_path}")
    } else {
        format!("{scheme_host}{full_path}?{canonical_query}")
    };
    http::Request::get(uri)
        .header("host", &ep.host)
        .header("x-amz-date", amz_date)
        .header("x-amz-content-sha256", payload)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
                ep.access_key
            ),
        )
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub key: String,
    pub etag: String,
    pub size: u64,
    pub modified_ms: i64,
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

/// The text of each `<tag>...</tag>` in `xml`, in order.
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// A `ListObjectsV2` answer: its objects, and the token of the next page.
pub(crate) fn parse_listing(xml: &str) -> Result<(Vec<Object>, Option<String>), String> {
    if let Some(code) = tags(xml, "Code").first() {
        let msg = tags(xml, "Message").first().copied().unwrap_or("");
        return Err(format!("the store answered {code}: {}", xml_unescape(msg)));
    }
    let mut objects = Vec::new();
    for c in tags(xml, "Contents") {
        let one = |t: &str| tags(c, t).first().map(|v| xml_unescape(v));
        let key = one("Key").ok_or("an object without a key")?;
        let modified = one("LastModified").unwrap_or_default();
        let modified_ms = chrono::DateTime::parse_from_rfc3339(&modified)
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("{modified:?} is not a time: {e}"))?;
        objects.push(Object {
            key,
            etag: one("ETag").unwrap_or_default().trim_matches('"').to_owned(),
            size: one("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            modified_ms,
        });
    }
    let truncated = tags(xml, "IsTruncated").first() == Some(&"true");
    let next = tags(xml, "NextContinuationToken")
        .first()
        .map(|t| xml_unescape(t))
        .filter(|_| truncated);
    Ok((objects, next))
}

/// Every object under the trigger's prefix.
async fn list_all(run: &TriggerRun, src: &S3Source, ep: &Endpoint) -> Result<Vec<Object>, String> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q: Vec<(&str, &str)> = vec![("list-type", "2")];
        if let Some(p) = &src.prefix {
            q.push(("prefix", p));
        }
        if let Some(t) = &token {
            q.push(("continuation-token", t));
        }
        let req = signed_get(ep, &format!("/{}", src.bucket), &q, chrono::Utc::now());
        let resp = tokio::time::timeout(Duration::from_secs(30), run.deps.http.request(req))
            .await
            .map_err(|_| format!("{} did not answer a listing within 30 s", ep.base))?
            .map_err(|e| format!("could not reach {}: {e}", ep.base))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("could not read a listing: {e}"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let (objects, next) =
            parse_listing(&text).map_err(|e| format!("listing bucket {}: {e}", src.bucket))?;
        if !status.is_success() {
            return Err(format!("listing bucket {} answered {status}", src.bucket));
        }
        all.extend(objects);
        match next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

fn wanted(src: &S3Source, key: &str) -> bool {
    src.prefix.as_deref().is_none_or(|p| key.starts_with(p))
        && src.suffix.as_deref().is_none_or(|s| key.ends_with(s))
}

/// S3's form of a key in an event: URL-encoded, a space as `+`.
fn event_key(key: &str) -> String {
    uri_encode(key, true).replace("%20", "+")
}

/// One object's event as Lambda's S3 event record.
fn event_record(bucket: &str, trigger: &str, name: &str, o: &Object, time_ms: i64) -> Value {
    json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": chrono::DateTime::from_timestamp_millis(time_ms).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "eventName": name,
        "userIdentity": { "principalId": "petrel" },
        "requestParameters": { "sourceIPAddress": "" },
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": trigger,
            "bucket": { "name": bucket, "ownerIdentity": { "principalId": "petrel" }, "arn": format!("arn:aws:s3:::{bucket}") },
            "object": { "key": event_key(&o.key), "size": o.size, "eTag": o.etag, "sequencer": format!("{:016X}", time_ms) },
        },
    })
}

fn record_of(event: Value, key: &str, etag: &str, time_ms: i64) -> Record {
    let id = format!("{key}@{etag}");
    Record {
        id: id.clone(),
        key: Some(Bytes::from(key.to_owned().into_bytes())),
        value: Bytes::from(serde_json::to_vec(&event).expect("an event serialises")),
        headers: Vec::new(),
        timestamp_ms: time_ms,
        meta: RecordMeta::Change {
            table: key.to_owned(),
            position: id,
        },
    }
}

/// The kept watermark: the newest modification time seen, and the versions seen since the
/// look-back before it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Watermark {
    t: i64,
    seen: BTreeMap<String, String>,
}

/// A lane and its worker, with a count of what it settled.
struct Pipe {
    lane: Arc<Lane<()>>,
    settled: watch::Receiver<u64>,
    pushed: u64,
    stop_tx: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

fn pipe(run: &Arc<TriggerRun>, src: &S3Source) -> Pipe {
    let origin = Arc::new(Origin::S3 {
        bucket: src.bucket.clone(),
    });
    let lane: Arc<Lane<()>> = Lane::new(src.settings.batch_size);
    let (settled_tx, settled) = watch::channel(0u64);
    let settled_tx = Arc::new(settled_tx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(lanes::work(
        run.clone(),
        origin,
        lane.clone(),
        None,
        run.slots(),
        move |acks: Vec<()>| {
            let settled_tx = settled_tx.clone();
            async move { settled_tx.send_modify(|n| *n += acks.len() as u64) }
        },
        |_: &[()]| async {},
        stop_rx,
    ));
    Pipe {
        lane,
        settled,
        pushed: 0,
        stop_tx,
        worker,
    }
}

impl Pipe {
    /// Pushes the records and waits until they are settled; `false` on a stop.
    async fn deliver(&mut self, records: Vec<Record>, stop: &mut watch::Receiver<bool>) -> bool {
        for r in records {
            if !self.lane.push(r, (), stop).await {
                return false;
            }
            self.pushed += 1;
        }
        let pushed = self.pushed;
        tokio::select! {
            r = self.settled.wait_for(|n| *n >= pushed) => r.is_ok(),
            _ = stop.changed() => false,
        }
    }

    async fn close(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.worker.await;
    }
}

async fn poll(
    run: &Arc<TriggerRun>,
    src: &S3Source,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let ep = parse_endpoint(&src.endpoint)?;
    let store = &run.deps.store;
    let (ns, func, name) = (&run.namespace, &run.function, &run.spec.name);
    let mut mark: Watermark = match store
        .trigger_position(ns, func, name)
        .await
        .map_err(|e| format!("could not read the trigger's watermark: {e}"))?
    {
        Some(p) => serde_json::from_str(&p).unwrap_or_default(),
        None => {
            // A new trigger starts from what is there now (starting_position = latest) or
            // delivers it all (earliest).
            let mut m = Watermark::default();
            if src.settings.starting_position == petrel_core::trigger::StartingPosition::Latest {
                let objects = list_all(run, src, &ep).await?;
                m.t = objects.iter().map(|o| o.modified_ms).max().unwrap_or(0);
                for o in objects
                    .iter()
                    .filter(|o| o.modified_ms >= m.t - LOOK_BACK_MS)
                {
                    m.seen.insert(o.key.clone(), o.etag.clone());
                }
            }
            let text = serde_json::to_string(&m).expect("a watermark serialises");
            store
                .set_trigger_position(ns, func, name, &text)
                .await
                .map_err(|e| format!("could not keep the trigger's watermark: {e}"))?;
            m
        }
    };
    let mut pipe = pipe(run, src);
    run.status.set(RunState::Running);
    let every = Duration::from_millis(src.poll_interval_ms);
    // The previous listing on this server, for removals.
    let mut previous: Option<HashMap<String, Object>> = None;
    let result = loop {
        let objects = match list_all(run, src, &ep).await {
            Ok(o) => o,
            Err(e) => break Err(e),
        };
        let now = petrel_core::now_ms();
        let mut records = Vec::new();
        let mut next = Watermark {
            t: mark.t,
            seen: BTreeMap::new(),
        };
        let mut fresh: Vec<&Object> = objects
            .iter()
            .filter(|o| wanted(src, &o.key))
            .filter(|o| o.modified_ms >= mark.t - LOOK_BACK_MS)
            .filter(|o| mark.seen.get(&o.key) != Some(&o.etag))
            .collect();
        fresh.sort_by(|a, b| (a.modified_ms, &a.key).cmp(&(b.modified_ms, &b.key)));
        for o in &fresh {
            next.t = next.t.max(o.modified_ms);
            if src.created {
                let ev = event_record(&src.bucket, name, "ObjectCreated:Put", o, o.modified_ms);
                records.push(record_of(ev, &o.key, &o.etag, o.modified_ms));
            }
        }
        for o in objects
            .iter()
            .filter(|o| o.modified_ms >= next.t - LOOK_BACK_MS)
        {
            next.seen.insert(o.key.clone(), o.etag.clone());
        }
        let listing: HashMap<String, Object> =
            objects.into_iter().map(|o| (o.key.clone(), o)).collect();
        if src.removed {
            if let Some(prev) = &previous {
                let mut gone: Vec<&Object> = prev
                    .values()
                    .filter(|o| wanted(src, &o.key) && !listing.contains_key(&o.key))
                    .collect();
                gone.sort_by(|a, b| a.key.cmp(&b.key));
                for o in gone {
                    let ev = event_record(&src.bucket, name, "ObjectRemoved:Delete", o, now);
                    records.push(record_of(ev, &o.key, "removed", now));
                }
            }
        }
        previous = Some(listing);
        if !records.is_empty() && !pipe.deliver(records, &mut stop).await {
            break Ok(());
        }
        if next.t != mark.t || next.seen != mark.seen {
            let text = serde_json::to_string(&next).expect("a watermark serialises");
            if let Err(e) = store.set_trigger_position(ns, func, name, &text).await {
                break Err(format!("could not keep the trigger's watermark: {e}"));
            }
            mark = next;
        }
        run.status.set_position(
            chrono::DateTime::from_timestamp_millis(mark.t)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        run.status.running();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break Ok(()),
        }
    };
    pipe.close().await;
    result
}

/// Takes webhook deliveries until `stop`.
async fn notify(run: &Arc<TriggerRun>, src: &S3Source, mut stop: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel::<Intake>(64);
    let key = (
        run.namespace.clone(),
        run.function.clone(),
        run.spec.name.clone(),
    );
    run.deps.webhooks.lock().unwrap().insert(key.clone(), tx);
    let mut pipe = pipe(run, src);
    run.status.set(RunState::Running);
    loop {
        let intake = tokio::select! {
            i = rx.recv() => i,
            _ = stop.changed() => None,
        };
        let Some(intake) = intake else { break };
        if pipe.deliver(intake.records, &mut stop).await {
            let _ = intake.done.send(());
        } else {
            break;
        }
    }
    run.deps.webhooks.lock().unwrap().remove(&key);
    pipe.close().await;
}

/// Why a webhook delivery was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotifyError {
    /// No such trigger in notify mode, or the wrong secret (answered alike).
    NotFound,
    /// The trigger is not running on this server (paused, stopping): the store should retry.
    Unavailable(String),
    /// The body is not an S3 event notification.
    BadBody(String),
}

/// The records of an S3 event notification (`{"Records": [...]}`) that the trigger wants.
pub(crate) fn notification_records(
    src: &S3Source,
    trigger: &str,
    body: &[u8],
) -> Result<Vec<Record>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let recs = v
        .get("Records")
        .and_then(Value::as_array)
        .ok_or("no Records: send S3's event notification format")?;
    let mut out = Vec::new();
    for r in recs {
        let name = r["eventName"].as_str().unwrap_or("");
        let name = name.strip_prefix("s3:").unwrap_or(name);
        let kind_ok = (src.created && name.starts_with("ObjectCreated"))
            || (src.removed && name.starts_with("ObjectRemoved"));
        let raw_key = r["s3"]["object"]["key"].as_str().unwrap_or("");
        let key = pct_decode(&raw_key.replace('+', " "));
        if !kind_ok || !wanted(src, &key) {
            continue;
        }
        if r["s3"]["bucket"]["name"]
            .as_str()
            .is_some_and(|b| b != src.bucket)
        {
            continue;
        }
        let time_ms = r["eventTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(petrel_core::now_ms, |t| t.timestamp_millis());
        let etag = r["s3"]["object"]["eTag"].as_str().unwrap_or("").to_owned();
        let mut rec = r.clone();
        rec["eventName"] = json!(name);
        rec["s3"]["configurationId"] = json!(trigger);
        let id_etag = if name.starts_with("ObjectRemoved") {
            "removed"
        } else {
            etag.as_str()
        };
        out.push(record_of(rec, &key, id_etag, time_ms));
    }
    Ok(out)
}

impl crate::Triggers {
    /// Takes an S3 event notification for an s3 trigger in notify mode, once `token` is its
    /// secret; answers once the records are settled (delivered, or sent to `on_failure`).
    pub async fn s3_notification(
        &self,
        namespace: &str,
        function: &str,
        trigger: &str,
        token: &str,
        body: &[u8],
    ) -> Result<usize, NotifyError> {
        let key = (
            namespace.to_owned(),
            function.to_owned(),
            trigger.to_owned(),
        );
        let run = self.run_of(&key).ok_or(NotifyError::NotFound)?;
        let petrel_core::trigger::TriggerSource::S3(src) = &run.spec.source else {
            return Err(NotifyError::NotFound);
        };
        if src.mode != S3Mode::Notify {
            return Err(NotifyError::NotFound);
        }
        let secret = run
            .deps
            .store
            .trigger_secret(namespace, function, trigger)
            .await
            .map_err(|e| {
                NotifyError::Unavailable(format!("could not read the trigger's secret: {e}"))
            })?;
        if !constant_time_eq(secret.as_bytes(), token.as_bytes()) {
            return Err(NotifyError::NotFound);
        }
        let records = notification_records(src, trigger, body).map_err(NotifyError::BadBody)?;
        let n = records.len();
        if n == 0 {
            return Ok(0);
        }
        let tx = run.deps.webhooks.lock().unwrap().get(&key).cloned();
        let Some(tx) = tx else {
            return Err(NotifyError::Unavailable(
                "the trigger is not running here (paused or starting): send it again later".into(),
            ));
        };
        let (done, settled) = oneshot::channel();
        tx.send(Intake { records, done }).await.map_err(|_| {
            NotifyError::Unavailable("the trigger stopped: send it again later".into())
        })?;
        settled.await.map_err(|_| {
            NotifyError::Unavailable(
                "the trigger stopped before the records were settled: send it again".into(),
            )
        })?;
        Ok(n)
    }

    /// The webhook path of an s3 trigger in notify mode, with its secret.
    pub async fn s3_webhook_path(
        &self,
        namespace: &str,
        function: &str,
        trigger: &str,
    ) -> Option<String> {
        let secret = self
            .inner
            .deps
            .store
            .trigger_secret(namespace, function, trigger)
            .await
            .ok()?;
        let ns = if namespace == petrel_core::DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!("&namespace={namespace}")
        };
        Some(format!(
            "/v1/functions/{function}/triggers/{trigger}/s3?token={secret}{ns}"
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_listings_and_keys() {
        let ep = parse_endpoint("http://AK:S%2Fk@127.0.0.1:9000").unwrap();
        assert_eq!(ep.base, "http://127.0.0.1:9000");
        assert_eq!(
            (ep.access_key.as_str(), ep.secret_key.as_str()),
            ("AK", "S/k")
        );
        assert!(parse_endpoint("http://127.0.0.1:9000").is_err());
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a &amp; b.jpg</Key><LastModified>2026-12-03T10:00:00.000Z</LastModified><ETag>&quot;e1&quot;</ETag><Size>5</Size></Contents><NextContinuationToken>t2</NextContinuationToken></ListBucketResult>";
        let (objs, next) = parse_listing(xml).unwrap();
        assert_eq!(objs[0].key, "a & b.jpg");
        assert_eq!(objs[0].etag, "e1");
        assert_eq!(objs[0].size, 5);
        assert_eq!(next.as_deref(), Some("t2"));
        assert!(
            parse_listing("<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>").is_err()
        );
        assert_eq!(event_key("in/a b+c.jpg"), "in/a+b%2Bc.jpg");
    }

    #[test]
    fn sigv4_matches_the_documented_example() {
        // AWS's published example of a signed GET (the "GET Object" example of the S3 SigV4
        // documentation) uses a Range header; this checks the same key derivation and the
        // canonical form through a known signing key instead.
        let key = {
            let mut k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
            for p in ["us-east-1", "iam", "aws4_request"] {
                k = hmac(&k, p);
            }
            hex::encode(k)
        };
        assert_eq!(
            key,
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
        let ep = parse_endpoint("http://AK:SK@h:9000").unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
            .unwrap()
            .to_utc();
        let req = signed_get(&ep, "/bkt", &[("list-type", "2"), ("prefix", "in/")], now);
        assert_eq!(
            req.uri().to_string(),
            "http://h:9000/bkt?list-type=2&prefix=in%2F"
        );
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AK/20261203/us-east-1/s3/aws4_request"),
            "{auth}"
        );
    }
}
