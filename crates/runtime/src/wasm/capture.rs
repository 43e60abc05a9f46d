//! A guest's stdout or stderr, kept in memory for the logs: bounded per request, and taken
//! (emptied) after each one, so that a guest kept for reuse starts every request with empty
//! output. Past the bound, writes are counted and dropped, never refused: a guest that prints
//! a lot loses its later lines, not its request (`println!` panics on a refused write).

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// What a guest may write at once: a permit, not a bound (the bound is the capacity).
const PERMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct Capture {
    capacity: usize,
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    bytes: BytesMut,
    dropped: usize,
}

impl Capture {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Arc::default(),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut c = self.inner.lock().unwrap();
        let room = self.capacity.saturating_sub(c.bytes.len());
        let kept = data.len().min(room);
        c.bytes.extend_from_slice(&data[..kept]);
        c.dropped += data.len() - kept;
    }

    /// What was written since the last take (with a line saying how much was dropped), and
    /// empties it.
    pub(crate) fn take(&self) -> Bytes {
        let mut c = self.inner.lock().unwrap();
        let mut bytes = std::mem::take(&mut c.bytes);
        let dropped = std::mem::take(&mut c.dropped);
        if dropped > 0 {
            if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                bytes.extend_from_slice(b"\n");
            }
            bytes.extend_from_slice(
                format!(
                    "[petrel: {dropped} more bytes of output were dropped: a request keeps {} KiB]\n",
                    self.capacity / 1024
                )
                .as_bytes(),
            );
        }
        bytes.freeze()
    }

    /// What was written since the last take, left in place.
    pub(crate) fn contents(&self) -> Bytes {
        Bytes::copy_from_slice(&self.inner.lock().unwrap().bytes)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_bound_is_counted_and_take_empties_it() {
        let c = Capture::new(8);
        c.append(b"hello ");
        c.append(b"world\n");
        assert_eq!(c.contents(), Bytes::from_static(b"hello wo"));
        let taken = String::from_utf8(c.take().to_vec()).unwrap();
        assert!(
            taken.starts_with("hello wo\n[petrel: 4 more bytes"),
            "{taken}"
        );
        assert!(c.take().is_empty());
        c.append(b"again\n");
        assert_eq!(c.take(), Bytes::from_static(b"again\n"));
    }
}
