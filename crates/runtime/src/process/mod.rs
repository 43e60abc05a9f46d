//! Process instances: one OS process per instance, in its sandbox and cgroup, speaking one of
//! two protocols, each a type: the Lambda Runtime API ([`LambdaApi`], for `python3`, `nodejs`
//! and `provided`) or HTTP on `$PORT` ([`HttpPort`], for `http`). How one starts is
//! `start.rs`; the process itself (spawn, output, exit) is `crate::os_process`.

mod start;

pub(crate) use start::ProcessContext;

use crate::cgroup::InstanceCgroup;
use crate::error::InvokeError;
use crate::instance::{
    HttpInstance, Instance, InstanceSpec, LambdaInstance, LambdaRequest, Protocol, StartTimings,
};
use crate::lambda_api::{self, LambdaOutcome, Pending};
use crate::logs::{Attribution, LogSink, LogSource};
use crate::os_process::Process;
use crate::{http_port, Body};
use petrel_core::BoxFuture;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running process instance. Dropping it kills its process group and removes its scratch
/// space.
pub struct ProcessInstance<P> {
    id: String,
    spec: InstanceSpec,
    timings: StartTimings,
    /// Dropped after the process is killed (fields drop after `Drop::drop`).
    cgroup: Option<InstanceCgroup>,
    process: Process,
    attribution: Arc<Attribution>,
    scratch: PathBuf,
    /// The instance's secrets as files, removed with it.
    secrets_dir: Option<start::SecretsDir>,
    sink: LogSink,
    payload_limit: usize,
    /// Why Petrel stopped the instance on purpose, if it did.
    stopped: Mutex<Option<String>>,
    protocol: P,
}

/// The Lambda Runtime API, served by Petrel for this instance alone.
pub struct LambdaApi(lambda_api::Endpoint);

/// HTTP on the instance's `$PORT`.
pub struct HttpPort(http_port::Endpoint);

/// What differs between the two protocols of a process instance.
pub(crate) trait ProcessProtocol: Send + Sync + Sized + 'static {
    /// Waits until the instance can take its first request.
    fn ready(instance: &ProcessInstance<Self>) -> BoxFuture<'_, Result<(), InvokeError>>;
    fn protocol(instance: &ProcessInstance<Self>) -> Protocol<'_>;
}

impl<P> std::fmt::Debug for ProcessInstance<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessInstance")
            .field("id", &self.id)
            .field("function", &self.spec.function)
            .field("version", &self.spec.version)
            .field("pid", &self.process.pid())
            .finish()
    }
}

impl<P> Drop for ProcessInstance<P> {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.scratch);
        if let Some(s) = &self.secrets_dir {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o700));
            let _ = std::fs::remove_dir_all(&s.path);
        }
    }
}

impl<P> ProcessInstance<P> {
    /// Why the instance's process ended: stopped by Petrel, killed for passing its memory
    /// limit, or a crash (with how it ended and its last lines of stderr).
    fn ended(&self, how: &str) -> InvokeError {
        if let Some(why) = self.stopped.lock().unwrap().clone() {
            return InvokeError::Stopped(why);
        }
        match &self.cgroup {
            Some(cg) if cg.oom_killed() => InvokeError::OutOfMemory(format!(
                "it used more than its memory_mb of {} MiB and the kernel stopped it",
                self.spec.spec.memory_mb
            )),
            _ => InvokeError::Crashed(self.process.exit_report(how)),
        }
    }

    fn source(&self) -> LogSource {
        LogSource {
            namespace: self.spec.namespace.clone(),
            function: self.spec.function.clone(),
            version: self.spec.version,
            instance: self.id.clone(),
        }
    }
}

impl<P: ProcessProtocol> Instance for ProcessInstance<P> {
    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    fn start_timings(&self) -> StartTimings {
        self.timings
    }

    fn is_alive(&self) -> bool {
        !self.process.has_exited()
    }

    fn kill(&self) {
        self.process.kill();
    }

    /// A process instance is killed to stop an invocation, so only when `id` is the one
    /// invocation it runs (others would go with it).
    fn stop_invocation(&self, id: &str, why: &str) -> bool {
        if self.attribution.running() != [id] {
            return false;
        }
        *self.stopped.lock().unwrap() = Some(why.to_owned());
        self.log_platform(None, &format!("stopping the instance: {why}"));
        self.kill();
        true
    }

    fn log_platform(&self, invocation: Option<&str>, message: &str) {
        self.sink.emit(self.source().line(
            "platform",
            invocation.map(str::to_owned),
            message.to_owned(),
        ));
    }

    fn protocol(&self) -> Protocol<'_> {
        P::protocol(self)
    }
}

impl ProcessProtocol for LambdaApi {
    fn ready(instance: &ProcessInstance<Self>) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async move {
            match instance.protocol.0.initialised().await {
                Ok(()) => Ok(()),
                Err(e) => {
                    instance.process.kill();
                    Err(e)
                }
            }
        })
    }

    fn protocol(instance: &ProcessInstance<Self>) -> Protocol<'_> {
        Protocol::Lambda(instance)
    }
}

impl ProcessProtocol for HttpPort {
    fn ready(instance: &ProcessInstance<Self>) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async move {
            // A loopback connect costs microseconds; polling often keeps the start short.
            let mut wait = Duration::from_millis(1);
            while !instance.protocol.0.accepts().await {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(5));
            }
            Ok(())
        })
    }

    fn protocol(instance: &ProcessInstance<Self>) -> Protocol<'_> {
        Protocol::Http(instance)
    }
}

impl LambdaInstance for ProcessInstance<LambdaApi> {
    fn invoke(&self, req: LambdaRequest) -> BoxFuture<'_, Result<LambdaOutcome, InvokeError>> {
        Box::pin(async move {
            let ep = &self.protocol.0;
            let deadline_ms = crate::logs::now_ms() + req.timeout.as_millis() as i64;
            let id = req.id.clone();
            self.attribution.begin(&id);
            let rx = ep.submit(Pending {
                id: req.id,
                event: req.event,
                deadline_ms,
                trace_id: req.trace_id.unwrap_or_else(new_trace_id),
                client_context: req.client_context,
                cognito_identity: req.cognito_identity,
            });
            let result = tokio::select! {
                // An answer first: a runtime may post it and exit at once (aws-lambda-go does
                // after a panic).
                biased;
                r = rx => r.unwrap_or_else(|_| Err(InvokeError::Crashed("the instance stopped".into()))),
                how = self.process.exited() => Err(if ep.delivered(&id) {
                    self.ended(&how)
                } else {
                    InvokeError::NotDelivered(self.process.exit_report(&how))
                }),
                _ = tokio::time::sleep(req.timeout) => {
                    self.process.kill();
                    Err(InvokeError::Timeout(req.timeout))
                }
            };
            if result.is_err() {
                ep.forget(&id);
            }
            self.attribution.end(&id);
            result
        })
    }
}

impl HttpInstance for ProcessInstance<HttpPort> {
    fn handle<'a>(
        &'a self,
        id: &'a str,
        req: http::Request<Body>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<http::Response<Body>, InvokeError>> {
        Box::pin(async move {
            self.attribution.begin(id);
            let result = tokio::select! {
                r = self.protocol.0.send(req) => match r {
                    Ok(mut resp) => {
                        crate::http_port::strip_hop_by_hop(resp.headers_mut());
                        // Bounded like a Runtime API response: refused whole when its length
                        // says so, else streamed and cut (the stream fails) at the limit.
                        let limit = self.payload_limit;
                        let declared = resp
                            .headers()
                            .get(http::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        if declared.is_some_and(|n| n > limit as u64) {
                            Err(InvokeError::ResponseTooLarge(limit))
                        } else {
                            Ok(resp.map(|b| Body::new(http_body_util::Limited::new(b, limit))))
                        }
                    }
                    Err(e) => {
                        // A dropped connection is most often a crash: give the exit a moment to
                        // show.
                        match tokio::time::timeout(Duration::from_millis(500), self.process.exited()).await {
                            Ok(how) => Err(self.ended(&how)),
                            Err(_) => Err(InvokeError::BadResponse(format!("the connection to the function failed ({e}){}", self.protocol.0.failure_hint()))),
                        }
                    }
                },
                how = self.process.exited() => Err(self.ended(&how)),
                _ = tokio::time::sleep(timeout) => {
                    self.process.kill();
                    Err(InvokeError::Timeout(timeout))
                }
            };
            self.attribution.end(id);
            result
        })
    }
}

/// An X-Ray-style trace id, as Lambda runtime clients expect in `Lambda-Runtime-Trace-Id`.
fn new_trace_id() -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    let secs = crate::logs::now_ms() / 1000;
    format!(
        "Root=1-{secs:08x}-{};Parent={};Sampled=0",
        &u[8..32],
        &u[16..32]
    )
}
