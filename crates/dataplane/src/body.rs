//! Reading request bodies under a size limit. A body over the limit is read to its end and
//! discarded (up to a cap) before the 413 goes out: a client still sending would otherwise see a
//! reset connection instead of the answer that tells it what is wrong.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use petrel_runtime::Body;
use std::time::Duration;

/// Most bytes read and thrown away to deliver a 413 cleanly; past it the connection is dropped.
const DRAIN_CAP: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read(String),
}

/// Collects a whole body of at most `limit` bytes.
pub async fn collect_limited(
    body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, BodyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= DRAIN_CAP) {
            drain(body).await;
        }
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body).await;
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards the rest of a body, within the drain cap and time.
pub async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len() as u64;
                if seen > DRAIN_CAP {
                    break;
                }
            }
        }
    })
    .await;
}
