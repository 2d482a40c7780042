//! Container services: the process started like an exec's (same mounts,
//! secrets, user, network), but left running; ready once every exposed
//! TCP port answers, stopped by its supervisor.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_exec::{Signaller, Started, Stream};
use kiln_store::SnapshotId;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::{Bound, ExposedPort, Instance, Protocol, Supervision, bind};
use crate::events::EventKind;
use crate::ops::exec::{Exec, stage};
use crate::ops::{Context, network};
use crate::report::Report;
use crate::result::ExecMeta;
use crate::running::Running;
use crate::volumes::Lease;
use crate::{Cause, SolveError};

/// How long a service may take to answer on its ports (Dagger's 15 minutes).
const READY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a service may take to stop when asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Bytes of a service's latest output kept for its error.
const TAIL_BYTES: usize = 8 << 10;

/// Starts the service's container and waits until it is ready.
pub(super) async fn start(
    cx: &Context<'_>,
    hostname: &str,
    exec: &Exec,
    ports: &[ExposedPort],
    inputs: &[Option<SnapshotId>],
    reports: &[Arc<Report>],
    how: Supervision,
) -> Result<Instance, Cause> {
    let output = Arc::new(Running::new(&how.audience, cx.secrets()));
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let live = {
        let (output, tail) = (output.clone(), tail.clone());
        Arc::new(move |stream: Stream, bytes: &[u8]| {
            output.output(stream, bytes, false);
            let mut tail = tail.lock().expect("tail lock");
            tail.extend(bytes);
            let extra = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..extra);
        })
    };
    let (started, kept, address) = match launch(cx, hostname, exec, inputs, reports, live).await {
        Ok(launched) => launched,
        Err(e) => return Err(how.failed(e)),
    };
    let (stop, stopped) = oneshot::channel();
    let (exit, exited) = watch::channel(None);
    let store = cx.store().clone();
    tokio::spawn(supervise(started, kept, stopped, exit, output, store, how));
    let instance = Instance {
        address,
        stop: Some(stop),
        exited,
    };
    let mut exited = instance.exited.clone();
    tokio::select! {
        result = tokio::time::timeout(READY_TIMEOUT, ready(address, ports)) => match result {
            Ok(()) => Ok(instance),
            Err(_) => {
                let reason = format!(
                    "the service did not answer on {} within {}s",
                    waited_ports(ports),
                    READY_TIMEOUT.as_secs()
                );
                let cause = Cause::Invalid(format!("{reason}{}", shown(&tail)));
                instance.fail(reason);
                Err(cause)
            }
        },
        code = exited.wait_for(Option::is_some) => {
            let message = match code.map(|c| c.unwrap_or(-1)).unwrap_or(-1) {
                0 => "service exited before healthcheck".to_string(),
                code => format!("exit code: {code}"),
            };
            Err(Cause::Invalid(format!("{message}{}", shown(&tail))))
        }
    }
}

/// Starts the container: its bound services first, its volumes, its
/// snapshots and its place on the network.
async fn launch(
    cx: &Context<'_>,
    hostname: &str,
    exec: &Exec,
    inputs: &[Option<SnapshotId>],
    reports: &[Arc<Report>],
    live: Arc<kiln_exec::LiveOutput<'static>>,
) -> Result<(Started, Kept, Ipv4Addr), Cause> {
    let failed = |e: SolveError| Cause::Invalid(e.report());
    let bound = bind(cx, &exec.services, inputs, reports).await.map_err(failed)?;
    let (leases, mut setup) = stage(cx, exec, inputs).await.map_err(failed)?;
    let networked = network::attach(cx, &mut setup.spec, setup.root.id(), bound.hosts(), Some(hostname))
        .await
        .map_err(failed)?
        .ok_or("services need the engine's container network")?;
    let address = networked.address();
    let started = cx.runtime().start(&setup.spec, live)?;
    let kept = Kept {
        _setup: setup,
        _networked: networked,
        _leases: leases,
        _bound: bound,
    };
    Ok((started, kept, address))
}

/// What a running service holds, released once its container is gone.
struct Kept {
    _setup: crate::ops::exec::Setup,
    _networked: network::Networked,
    _leases: Vec<Lease>,
    _bound: Bound,
}

/// The ports health checks dial, for messages.
fn waited_ports(ports: &[ExposedPort]) -> String {
    let dialled: Vec<String> = checked(ports).map(|p| format!("{}/tcp", p.port)).collect();
    dialled.join(", ")
}

fn checked(ports: &[ExposedPort]) -> impl Iterator<Item = &ExposedPort> {
    ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp && !p.skip_health_check)
}

/// The service's latest output, for its error.
fn shown(tail: &Mutex<VecDeque<u8>>) -> String {
    let tail = tail.lock().expect("tail lock");
    let (a, b) = tail.as_slices();
    let text = String::from_utf8_lossy(&[a, b].concat()).trim_end().to_string();
    if text.is_empty() {
        "\n(the service wrote no output)".into()
    } else {
        format!("\n--- service output (last lines) ---\n{text}")
    }
}

/// Waits until every checked port accepts a connection.
async fn ready(address: Ipv4Addr, ports: &[ExposedPort]) {
    for port in checked(ports) {
        let mut pause = Duration::from_millis(10);
        loop {
            let dial = TcpStream::connect((address, port.port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), dial).await {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Watches the container until it exits, or stops it when asked (asked
/// to stop, then killed after [`STOP_GRACE`]); then releases what it held
/// and tells how it ended, with its output kept for `kiln logs`.
async fn supervise(
    started: Started,
    kept: Kept,
    stop: oneshot::Receiver<String>,
    exit: watch::Sender<Option<i32>>,
    output: Arc<Running>,
    store: Arc<kiln_store::Store>,
    how: Supervision,
) {
    let since = Instant::now();
    let signaller = started.signaller();
    let wait = started.wait();
    tokio::pin!(wait);
    let (ended, failure) = tokio::select! {
        ended = &mut wait => {
            let failure = match &ended {
                Ok(out) if out.exit_code == 0 => None,
                Ok(out) => Some(format!("the service exited: exit code: {}", out.exit_code)),
                Err(e) => Some(e.to_string()),
            };
            (ended, failure)
        }
        asked = stop => {
            let kill = |s: Signaller| s.signal("KILL");
            let send = |how: fn(Signaller) -> std::io::Result<()>| {
                let s = signaller.clone();
                tokio::task::spawn_blocking(move || how(s))
            };
            let _ = send(if how.kill.load(Ordering::SeqCst) {
                kill
            } else {
                |s: Signaller| s.terminate()
            })
            .await;
            let ended = match tokio::time::timeout(STOP_GRACE, &mut wait).await {
                Ok(ended) => ended,
                Err(_) => {
                    let _ = send(kill).await;
                    wait.await
                }
            };
            (ended, asked.ok())
        }
    };
    for stream in [Stream::Stdout, Stream::Stderr] {
        output.output(stream, &[], true);
    }
    let code = ended.as_ref().map_or(-1, |out| out.exit_code);
    drop(kept);
    let meta = match ended {
        Ok(out) => {
            let scrub = |b: &[u8]| how.secrets.scrub_bytes(b);
            let streams = [scrub(&out.stdout), scrub(&out.stderr)];
            ExecMeta::keep(&store, out.exit_code, streams, Some(scrub(&out.combined))).await
        }
        Err(_) => None,
    };
    let kind = match failure {
        None => EventKind::Done {
            duration: since.elapsed(),
        },
        Some(message) => EventKind::Failed { message },
    };
    how.audience.emit(kind, meta);
    // Last: whoever waits for the end finds everything released and told.
    let _ = exit.send(Some(code));
}
