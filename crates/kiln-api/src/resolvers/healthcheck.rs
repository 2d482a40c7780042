//! Docker health checks in image configs: `withDockerHealthcheck`,
//! `withoutDockerHealthcheck` and the Dockerfile's `HEALTHCHECK` build the
//! same [`Healthcheck`], which images carry (pulled, built, exported and
//! published) in their config's `Healthcheck` field.

use std::sync::Arc;

use kiln_oci::Healthcheck;

use crate::api::{Api, Output, Registry, container};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::Object;

pub fn register(r: &mut Registry) {
    r.add("Container", "withDockerHealthcheck", resolver!(with_docker_healthcheck));
    r.add(
        "Container",
        "withoutDockerHealthcheck",
        resolver!(without_docker_healthcheck),
    );
}

/// The timing of a health check, as durations people write (`30s`, `1m30s`).
#[derive(Default)]
pub(super) struct Timing {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<i64>,
}

/// A health check running `args` (one shell command line when `shell`).
pub(super) fn healthcheck(args: Vec<String>, shell: bool, timing: Timing) -> Result<Healthcheck, String> {
    let test = match (shell, args.len()) {
        (true, 1) => ["CMD-SHELL".to_string()].into_iter().chain(args).collect(),
        (true, n) => return Err(format!("a shell health check is one command line, got {n} arguments")),
        (false, 0) => return Err("a health check needs a command: args is empty".into()),
        (false, _) => ["CMD".to_string()].into_iter().chain(args).collect(),
    };
    let nanos = |what: &str, text: Option<String>| -> Result<i64, String> {
        let Some(text) = text else { return Ok(0) };
        let d = kiln_store::duration::parse_duration(&text).map_err(|e| format!("{what}: {e}"))?;
        i64::try_from(d.as_nanos()).map_err(|_| format!("{what}: {text} is too long"))
    };
    Ok(Healthcheck {
        test,
        interval: nanos("interval", timing.interval)?,
        timeout: nanos("timeout", timing.timeout)?,
        start_period: nanos("startPeriod", timing.start_period)?,
        start_interval: nanos("startInterval", timing.start_interval)?,
        retries: timing.retries.unwrap_or(0),
    })
}

async fn with_docker_healthcheck(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let timing = Timing {
        interval: args.opt_string("interval"),
        timeout: args.opt_string("timeout"),
        start_period: args.opt_string("startPeriod"),
        start_interval: args.opt_string("startInterval"),
        retries: args.int("retries"),
    };
    let check = healthcheck(args.strings("args"), args.bool("shell"), timing)
        .map_err(|e| ApiError::invalid(format!("withDockerHealthcheck: {e}")))?;
    c.healthcheck = Some(check);
    Ok(Output::Object(Object::Container(Box::new(c))))
}

async fn without_docker_healthcheck(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    c.healthcheck = None;
    Ok(Output::Object(Object::Container(Box::new(c))))
}
