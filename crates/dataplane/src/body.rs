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

/// A request body streamed to a function that may not exceed `limit` bytes. Past the limit it
/// reads and discards the rest of the upload (up to the drain cap) so the client gets a clean
/// answer, then fails the stream and raises its flag so the gateway answers 413.
pub struct LimitedBody {
    inner: Body,
    remaining: usize,
    drained: u64,
    exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
    passed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a [`LimitedBody`] saw: whether it outgrew its limit, and how many bytes it passed on.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch {
    pub exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub passed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LimitedBody {
    pub fn new(inner: Body, limit: usize) -> (Self, BodyWatch) {
        let watch = BodyWatch::default();
        (
            Self {
                inner,
                remaining: limit,
                drained: 0,
                exceeded: watch.exceeded.clone(),
                passed: watch.passed.clone(),
            },
            watch,
        )
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        let over = || axum::Error::new("the request body is larger than the payload limit");
        loop {
            let this = &mut *self;
            let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if this.exceeded.load(Ordering::Relaxed) => {
                    return Poll::Ready(Some(Err(over())))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            let len = frame.data_ref().map(Bytes::len).unwrap_or(0);
            if this.exceeded.load(Ordering::Relaxed) {
                this.drained += len as u64;
                if this.drained > DRAIN_CAP {
                    return Poll::Ready(Some(Err(over())));
                }
                continue;
            }
            if len > this.remaining {
                this.exceeded.store(true, Ordering::Relaxed);
                this.drained = len as u64;
                continue;
            }
            this.remaining -= len;
            this.passed.fetch_add(len as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
