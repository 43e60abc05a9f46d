//! A starter of in-memory instances, for tests of the data plane and of the crates that call
//! it: no process, no component, only what a pool and the invocation core see of an instance.
//! Compiled for this crate's tests and, with the `testing` feature, for others'.

use petrel_core::BoxFuture;
use petrel_runtime::{
    Body, HttpInstance, Instance, InstanceSpec, InvokeError, Protocol, StartTimings, Starter,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts instances that speak HTTP after `delay`, or fails every start with `fail` when set.
/// Each instance answers `200` with `METHOD PATH?QUERY` and the request's body, one per line.
#[derive(Default)]
pub struct FakeStarter {
    pub started: AtomicUsize,
    pub delay: Duration,
    pub fail: Option<InvokeError>,
    /// Every instance started, in order.
    pub instances: Mutex<Vec<Arc<FakeInstance>>>,
}

pub struct FakeInstance {
    id: String,
    spec: InstanceSpec,
    pub killed: AtomicBool,
}

impl Starter for FakeStarter {
    fn start(
        &self,
        spec: InstanceSpec,
    ) -> BoxFuture<'static, Result<Arc<dyn Instance>, InvokeError>> {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        let (delay, fail) = (self.delay, self.fail.clone());
        let i = Arc::new(FakeInstance {
            id: format!("i-{n}"),
            spec,
            killed: AtomicBool::new(false),
        });
        self.instances.lock().unwrap().push(i.clone());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match fail {
                Some(e) => Err(e),
                None => Ok(i as Arc<dyn Instance>),
            }
        })
    }
}

impl Instance for FakeInstance {
    fn id(&self) -> &str {
        &self.id
    }
    fn spec(&self) -> &InstanceSpec {
        &self.spec
    }
    fn start_timings(&self) -> StartTimings {
        StartTimings::default()
    }
    fn is_alive(&self) -> bool {
        !self.killed.load(Ordering::SeqCst)
    }
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }
    fn stop_invocation(&self, _id: &str, _why: &str) -> bool {
        false
    }
    fn log_platform(&self, _invocation: Option<&str>, _message: &str) {}
    fn protocol(&self) -> Protocol<'_> {
        Protocol::Http(self)
    }
}

impl HttpInstance for FakeInstance {
    fn handle<'a>(
        &'a self,
        _id: &'a str,
        req: http::Request<Body>,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<http::Response<Body>, InvokeError>> {
        Box::pin(async move {
            use http_body_util::BodyExt;
            let line = format!("{} {}\n", req.method(), req.uri());
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(|e| InvokeError::BadResponse(e.to_string()))?
                .to_bytes();
            let mut out = line.into_bytes();
            out.extend_from_slice(&body);
            Ok(http::Response::new(Body::from(out)))
        })
    }
}
