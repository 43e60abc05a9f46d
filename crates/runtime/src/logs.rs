//! Capture of instance output: lines read from a pipe, bounded in length, tagged with the
//! invocation they belong to when that can be told, and handed to a bounded sink that never
//! blocks the instance (a full sink counts a drop).

use petrel_core::api::LogLine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// Longest line kept; the rest of a longer line is cut and marked.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Marker appended to a line that was cut.
pub const TRUNCATED_MARKER: &str = " [petrel: line truncated]";
/// Most log output kept per invocation (stdout and stderr together); the rest is dropped after
/// one marker line, so that one chatty or hostile invocation cannot flood the log store.
pub const MAX_LOG_BYTES_PER_INVOCATION: usize = 2 * 1024 * 1024;

/// Where log lines go: a bounded channel whose overflow is counted, never waited on.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
    taps: Arc<Taps>,
}

/// Copies of the lines of particular invocations, for a caller that asked for its log tail.
#[derive(Debug, Default)]
struct Taps {
    /// How many taps are open: emitting checks this, not the lock, when there are none.
    open: std::sync::atomic::AtomicUsize,
    lines: Mutex<std::collections::HashMap<String, Vec<String>>>,
}

/// Most bytes a tap keeps (the oldest lines go first).
const TAP_BYTES: usize = 64 * 1024;

/// The lines of one invocation, collected while it is open.
#[derive(Debug)]
pub struct LogTap {
    taps: Arc<Taps>,
    invocation: String,
}

impl LogTap {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.taps
            .lines
            .lock()
            .unwrap()
            .get(&self.invocation)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for LogTap {
    fn drop(&mut self) {
        self.taps.lines.lock().unwrap().remove(&self.invocation);
        self.taps.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LogSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                taps: Arc::default(),
            },
            rx,
        )
    }

    pub fn emit(&self, line: LogLine) {
        if self.taps.open.load(Ordering::Relaxed) > 0 {
            if let Some(inv) = &line.invocation {
                if let Some(v) = self.taps.lines.lock().unwrap().get_mut(inv) {
                    v.push(line.line.clone());
                    let mut total: usize = v.iter().map(|l| l.len() + 1).sum();
                    while total > TAP_BYTES && !v.is_empty() {
                        total -= v.remove(0).len() + 1;
                    }
                }
            }
        }
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts collecting the lines of `invocation` (until the tap is dropped).
    pub fn tap(&self, invocation: &str) -> LogTap {
        self.taps
            .lines
            .lock()
            .unwrap()
            .insert(invocation.to_owned(), Vec::new());
        self.taps.open.fetch_add(1, Ordering::Relaxed);
        LogTap {
            taps: self.taps.clone(),
            invocation: invocation.to_owned(),
        }
    }

    /// Lines lost to back-pressure since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Which invocation output belongs to: the only one in flight, else the last one that ran
/// (output read just after a response still belongs to it), else none.
#[derive(Debug, Default)]
pub struct Attribution {
    state: Mutex<(Vec<String>, Option<String>)>,
    /// Log bytes of the invocation output is attributed to: (invocation, bytes, cut).
    volume: Mutex<(Option<String>, usize, bool)>,
}

/// What to do with a line of output, given its invocation's log volume so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Charge {
    Keep,
    /// The invocation just went past its volume: write the marker instead of the line.
    Cut,
    Drop,
}

impl Attribution {
    pub fn begin(&self, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.0.push(id.to_owned());
    }

    /// The invocations running now.
    pub fn running(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    pub fn end(&self, id: &str) {
        let mut s = self.state.lock().unwrap();
        s.0.retain(|x| x != id);
        s.1 = Some(id.to_owned());
    }

    /// Counts `bytes` of output towards `invocation`'s log volume.
    pub fn charge(&self, invocation: Option<&str>, bytes: usize) -> Charge {
        let mut v = self.volume.lock().unwrap();
        if v.0.as_deref() != invocation {
            *v = (invocation.map(str::to_owned), 0, false);
        }
        if v.2 {
            return Charge::Drop;
        }
        v.1 += bytes + 1;
        if v.1 > MAX_LOG_BYTES_PER_INVOCATION {
            v.2 = true;
            return Charge::Cut;
        }
        Charge::Keep
    }

    pub fn current(&self) -> Option<String> {
        let s = self.state.lock().unwrap();
        match s.0.len() {
            0 => s.1.clone(),
            1 => Some(s.0[0].clone()),
            _ => None,
        }
    }
}

/// Identity stamped on every line of one instance.
#[derive(Debug, Clone)]
pub struct LogSource {
    pub namespace: String,
    pub function: String,
    pub version: u32,
    pub instance: String,
}

impl LogSource {
    pub fn line(&self, stream: &str, invocation: Option<String>, line: String) -> LogLine {
        LogLine {
            ts: now_ms(),
            namespace: self.namespace.clone(),
            function: self.function.clone(),
            version: self.version,
            instance: self.instance.clone(),
            invocation,
            stream: stream.to_owned(),
            line,
        }
    }
}

pub(crate) use petrel_core::now_ms;

/// How long the end of a line may wait for its newline before it is a line of its own.
const PARTIAL_LINE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Reads lines from a pipe until EOF, cutting long ones, and calls `each` with every line.
pub async fn read_lines<R: AsyncRead + Unpin>(pipe: R, mut each: impl FnMut(String)) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        // A line with no newline yet is a line of its own once its writer pauses: the Java
        // runtime client's `context.getLogger().log(..)` writes no newline, nor does Node's
        // `process.stdout.write`. (fill_buf is cancel safe: nothing read is lost.)
        let next = if line.is_empty() && !cut {
            reader.fill_buf().await
        } else {
            match tokio::time::timeout(PARTIAL_LINE_WAIT, reader.fill_buf()).await {
                Ok(r) => r,
                Err(_) => {
                    each(finish_line(&mut line, &mut cut));
                    continue;
                }
            }
        };
        let buf = match next {
            Ok([]) => break,
            Ok(b) => b,
            Err(_) => break,
        };
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        if !cut {
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.len() > room {
                cut = true;
            }
        }
        let used = newline.map(|i| i + 1).unwrap_or(buf.len());
        reader.consume(used);
        if newline.is_some() {
            each(finish_line(&mut line, &mut cut));
        }
    }
    if !line.is_empty() || cut {
        each(finish_line(&mut line, &mut cut));
    }
}

fn finish_line(line: &mut Vec<u8>, cut: &mut bool) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut s = String::from_utf8_lossy(line).into_owned();
    if *cut {
        s.push_str(TRUNCATED_MARKER);
    }
    line.clear();
    *cut = false;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_long_ones_cut() {
        let long = "x".repeat(MAX_LINE_BYTES + 100);
        let input = format!("one\r\ntwo\n{long}\nlast-without-newline");
        let mut got = Vec::new();
        read_lines(input.as_bytes(), |l| got.push(l)).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two");
        assert!(got[2].ends_with(TRUNCATED_MARKER));
        assert_eq!(got[2].len(), MAX_LINE_BYTES + TRUNCATED_MARKER.len());
        assert_eq!(got[3], "last-without-newline");
    }

    #[tokio::test]
    async fn a_line_without_its_newline_is_one_once_its_writer_pauses() {
        let (mut w, r) = tokio::io::duplex(1024);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let reader = tokio::spawn(read_lines(r, move |l| g.lock().unwrap().push(l)));
        use tokio::io::AsyncWriteExt;
        w.write_all(b"no newline").await.unwrap();
        // Read back without a fixed sleep: the line appears once the reader's wait ends.
        while got.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        w.write_all(b"next\n").await.unwrap();
        drop(w);
        reader.await.unwrap();
        assert_eq!(*got.lock().unwrap(), ["no newline", "next"]);
    }

    #[test]
    fn attribution_follows_in_flight_invocations() {
        let a = Attribution::default();
        assert_eq!(a.current(), None);
        a.begin("a");
        assert_eq!(a.current().as_deref(), Some("a"));
        a.begin("b");
        assert_eq!(a.current(), None, "two in flight: cannot tell");
        a.end("a");
        assert_eq!(a.current().as_deref(), Some("b"));
        a.end("b");
        assert_eq!(
            a.current().as_deref(),
            Some("b"),
            "late output belongs to the last one"
        );
    }

    #[test]
    fn log_volume_is_bounded_per_invocation() {
        let a = Attribution::default();
        let line = MAX_LOG_BYTES_PER_INVOCATION / 4;
        let got: Vec<Charge> = (0..6).map(|_| a.charge(Some("a"), line)).collect();
        assert_eq!(
            got,
            [
                Charge::Keep,
                Charge::Keep,
                Charge::Keep,
                Charge::Cut,
                Charge::Drop,
                Charge::Drop
            ]
        );
        assert_eq!(a.charge(Some("b"), line), Charge::Keep, "a new invocation");
    }

    #[test]
    fn a_full_sink_counts_drops() {
        let (sink, _rx) = LogSink::new(1);
        let src = LogSource {
            namespace: "default".into(),
            function: "f".into(),
            version: 1,
            instance: "i".into(),
        };
        sink.emit(src.line("stdout", None, "a".into()));
        sink.emit(src.line("stdout", None, "b".into()));
        assert_eq!(sink.dropped(), 1);
    }
}
