//! The OS process behind an instance: spawned in its own process group with a clean environment,
//! its output captured line by line, its exit watched, and the whole group killed on request or
//! when the instance is dropped, so nothing it started is left running.

use crate::logs::{read_lines, Attribution, LogSink, LogSource};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;

/// Lines of stderr kept to explain a crash or a failed start.
const STDERR_TAIL_LINES: usize = 20;

/// A running (or exited) instance process.
#[derive(Debug)]
pub(crate) struct Process {
    pid: i32,
    exit: watch::Receiver<Option<String>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    pub(crate) fn spawn(
        mut cmd: Command,
        source: LogSource,
        sink: LogSink,
        attribution: Arc<Attribution>,
    ) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));

        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let out_reader = {
            let (source, sink, attribution) = (source.clone(), sink.clone(), attribution.clone());
            tokio::spawn(read_lines(stdout, move |line| {
                sink.emit(source.line("stdout", attribution.current(), line));
            }))
        };
        let err_reader = {
            let (source, sink, tail) = (source.clone(), sink.clone(), stderr_tail.clone());
            tokio::spawn(read_lines(stderr, move |line| {
                {
                    let mut t = tail.lock().unwrap();
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                sink.emit(source.line("stderr", attribution.current(), line));
            }))
        };

        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            // Whatever the leader left behind in its group goes with it.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            // Let the readers drain what was written before the exit, so the tail is complete.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = out_reader.await;
                let _ = err_reader.await;
            })
            .await;
            let how = match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("could not be waited for ({e})"),
            };
            sink.emit(source.line("platform", None, format!("instance process {how}")));
            let _ = exit_tx.send(Some(how));
        });
        Ok(Self {
            pid,
            exit,
            stderr_tail,
        })
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
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| sig.to_string());
        format!("was killed by signal {name}")
    } else {
        "ended".to_owned()
    }
}
