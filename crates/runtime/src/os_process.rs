//! The OS process behind an instance: spawned in its own process group with a clean environment,
//! its output captured line by line, its exit watched, and the whole group killed on request or
//! when the instance is dropped, so nothing it started is left running.

use crate::logs::{
    read_lines, Attribution, Charge, LogSink, LogSource, MAX_LOG_BYTES_PER_INVOCATION,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::watch;

/// Emits a line of output unless its invocation is past its log volume; the first line past
/// it becomes the marker saying so.
fn emit_bounded(
    sink: &LogSink,
    source: &SourceCell,
    attribution: &Attribution,
    stream: &str,
    line: String,
) {
    let id = attribution.current();
    let line = match attribution.charge(id.as_deref(), line.len()) {
        Charge::Keep => line,
        Charge::Cut => format!(
            "[petrel: log output of this invocation cut after {} MiB; the rest is dropped]",
            MAX_LOG_BYTES_PER_INVOCATION >> 20
        ),
        Charge::Drop => return,
    };
    let l = source.read().unwrap().line(stream, id, line);
    emit(sink, l);
}

/// Lines of stderr kept to explain a crash or a failed start.
const STDERR_TAIL_LINES: usize = 20;

/// A running (or exited) instance process.
#[derive(Debug)]
pub(crate) struct Process {
    pid: i32,
    exit: watch::Receiver<Option<String>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// The identity stamped on a process's output; a standby process gets its function's when it is
/// handed one.
pub(crate) type SourceCell = Arc<RwLock<LogSource>>;

impl Process {
    pub(crate) fn spawn(
        mut cmd: Command,
        source: SourceCell,
        sink: LogSink,
        attribution: Arc<Attribution>,
    ) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Self::spawn_with_stdin(cmd, source, sink, attribution).map(|(p, _)| p)
    }

    /// Like [`Process::spawn`], with stdin as the command set it (a standby process reads its
    /// function from a pipe).
    pub(crate) fn spawn_with_stdin(
        mut cmd: Command,
        source: SourceCell,
        sink: LogSink,
        attribution: Arc<Attribution>,
    ) -> std::io::Result<(Self, Option<tokio::process::ChildStdin>)> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let exit = async move {
            match child.wait().await {
                Ok(s) => describe_exit(s),
                Err(e) => format!("could not be waited for ({e})"),
            }
        };
        Ok((
            Self::watch(pid, stdout, stderr, exit, source, sink, attribution),
            stdin,
        ))
    }

    /// A process another one made (the Python fork server's child `pid`): not Petrel's child,
    /// so its end comes from `exit`, which that process's reports fill; its output comes
    /// through the pipes Petrel handed it.
    pub(crate) fn forked(
        pid: i32,
        exit: watch::Receiver<Option<String>>,
        stdout: OwnedFd,
        stderr: OwnedFd,
        source: SourceCell,
        sink: LogSink,
        attribution: Arc<Attribution>,
    ) -> std::io::Result<Self> {
        let out = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout)?;
        let err = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr)?;
        let mut rx = exit;
        let exit = async move {
            match rx.wait_for(|e| e.is_some()).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "ended".to_owned(),
            }
        };
        Ok(Self::watch(pid, out, err, exit, source, sink, attribution))
    }

    /// Reads the output, keeps the stderr tail, and turns the end of the process into the exit
    /// watch (killing what the leader left behind in its group).
    fn watch<O, E>(
        pid: i32,
        stdout: O,
        stderr: E,
        ended: impl std::future::Future<Output = String> + Send + 'static,
        source: SourceCell,
        sink: LogSink,
        attribution: Arc<Attribution>,
    ) -> Self
    where
        O: AsyncRead + Unpin + Send + 'static,
        E: AsyncRead + Unpin + Send + 'static,
    {
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let out_reader = {
            let (source, sink, attribution) = (source.clone(), sink.clone(), attribution.clone());
            tokio::spawn(read_lines(stdout, move |line| {
                emit_bounded(&sink, &source, &attribution, "stdout", line);
            }))
        };
        let err_reader = {
            let (source, sink, tail, attribution) = (
                source.clone(),
                sink.clone(),
                stderr_tail.clone(),
                attribution.clone(),
            );
            tokio::spawn(read_lines(stderr, move |line| {
                {
                    let mut t = tail.lock().unwrap();
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                emit_bounded(&sink, &source, &attribution, "stderr", line);
            }))
        };

        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let how = ended.await;
            // Whatever the leader left behind in its group goes with it.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            // Let the readers drain what was written before the exit, so the tail is complete.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = out_reader.await;
                let _ = err_reader.await;
            })
            .await;
            let l =
                source
                    .read()
                    .unwrap()
                    .line("platform", None, format!("instance process {how}"));
            emit(&sink, l);
            let _ = exit_tx.send(Some(how));
        });
        Self {
            pid,
            exit,
            stderr_tail,
        }
    }

    /// Kills the whole process group. Idempotent.
    pub(crate) fn kill(&self) {
        if self.exit.borrow().is_none() {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits until the process has exited (and its output is drained); returns how it ended.
    pub(crate) async fn exited(&self) -> String {
        let mut rx = self.exit.clone();
        let how = match rx.wait_for(|e| e.is_some()).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => "ended".to_owned(),
        };
        how
    }

    /// A one-paragraph account of an exit, with the last lines of stderr.
    pub(crate) fn exit_report(&self, how: &str) -> String {
        let tail = self.stderr_tail.lock().unwrap();
        if tail.is_empty() {
            format!("the instance process {how}")
        } else {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            format!(
                "the instance process {how}; last lines of stderr:\n{}",
                lines.join("\n")
            )
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    describe_end(status.code(), status.signal())
}

/// How a process ended, from its exit code or the signal that killed it (the signal wins).
pub(crate) fn describe_end(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| sig.to_string());
            format!("was killed by signal {name}")
        }
        (Some(code), None) => format!("exited with status {code}"),
        (None, None) => "ended".to_owned(),
    }
}

/// Output of a standby process that was never handed a function (it has no namespace) is not
/// any function's log.
fn emit(sink: &LogSink, line: petrel_core::api::LogLine) {
    if !line.namespace.is_empty() {
        sink.emit(line);
    }
}
