//! Services: containers that run beside the execs that need them, and
//! proxies that stand in for ports of the host, reached by name on the
//! engine's network.
//!
//! A service starts when an exec bound to it (or a client's `Service.start`)
//! first needs it, once for everyone who needs the same definition on the
//! same input trees; it is health-checked on its exposed ports before
//! anyone uses it, and stopped (namespace and address released) when the
//! last holder lets go. Services are never cached: an exec bound to one is
//! keyed by the service's definition, never by its state.

mod container;
mod host;
mod proxy;

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::future::try_join_all;
use kiln_graph::{Key, KeyBuilder, SecretRef};
use kiln_store::SnapshotId;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, oneshot, watch};

use crate::events::{EventKind, Subject};
use crate::ops::{Context, Exec};
use crate::report::{Audience, Membership, Named, Report};
use crate::{Cause, SolveError};

pub use proxy::forward;

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port a container service listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedPort {
    /// The port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// What it is for, for people.
    pub description: Option<String>,
    /// Not dialled before the service counts as ready.
    pub skip_health_check: bool,
}

/// A port of one side forwarded to a port of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// The port clients connect to.
    pub frontend: u16,
    /// The port it is forwarded to.
    pub backend: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// What a service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// A container's process; its inputs are the service's own, numbered
    /// from 0 (the rootfs), as an exec's are.
    Container {
        /// The process, with its mounts and its own bindings.
        exec: Box<Exec>,
        /// The ports it listens on.
        ports: Vec<ExposedPort>,
    },
    /// Ports of the client's host (`host`, e.g. its loopback), reachable
    /// from containers at the service's address.
    Host {
        /// The host name or address to forward to.
        host: String,
        /// The service's ports and the host ports they reach.
        ports: Vec<PortForward>,
    },
}

/// A service's definition: what it runs and the name containers reach it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// Its host name on the network.
    pub hostname: String,
    /// Whether the pipeline chose the name (else it is derived from the
    /// definition, and left out of the cache keys of the execs bound to it).
    pub custom_hostname: bool,
    /// What it runs.
    pub kind: ServiceKind,
}

impl ServiceDef {
    /// For progress: `service <hostname>: <command>`.
    pub fn describe(&self) -> String {
        match &self.kind {
            ServiceKind::Container { exec, .. } => {
                format!(
                    "service {}: {}",
                    self.hostname,
                    crate::ops::exec::shell_words(&exec.args)
                )
            }
            ServiceKind::Host { host, ports } => {
                let ports: Vec<String> = ports.iter().map(|p| format!("{}/{}", p.backend, p.protocol)).collect();
                format!("service {}: {host} ports {}", self.hostname, ports.join(", "))
            }
        }
    }

    /// The secrets its container (and the services it binds) use.
    pub(crate) fn secrets(&self) -> Vec<&SecretRef> {
        match &self.kind {
            ServiceKind::Container { exec, .. } => crate::ops::Operation::secrets(exec.as_ref()),
            ServiceKind::Host { .. } => Vec::new(),
        }
    }

    /// The definition as cache keys see it: derived host names left out,
    /// since they follow definitions, not contents.
    pub(crate) fn keyed(&self) -> ServiceDef {
        let mut def = self.clone();
        if !def.custom_hostname {
            def.hostname.clear();
        }
        if let ServiceKind::Container { exec, .. } = &mut def.kind {
            **exec = exec.keyed();
        }
        def
    }
}

/// A service bound to an exec (or to a service) under an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The name the binder reaches it by.
    pub alias: String,
    /// Where the service's inputs start among the binder's node inputs.
    pub first_input: usize,
    /// How many inputs the service has.
    pub inputs: usize,
    /// The service.
    pub service: ServiceDef,
}

/// The services running on this engine, by identity (definition and input
/// trees): each runs once however many hold it.
#[derive(Default)]
pub(crate) struct Services {
    entries: Mutex<HashMap<Key, Weak<Entry>>>,
}

/// One service's slot: started once by its first holder.
struct Entry {
    hostname: String,
    started: OnceCell<Result<Instance, Cause>>,
    audience: Arc<Audience>,
    subject: Subject,
    /// Killed rather than asked to stop when the last holder lets go.
    kill: Arc<AtomicBool>,
}

/// A running service; stopped when dropped (by the last holder).
pub(crate) struct Instance {
    address: Ipv4Addr,
    /// Tells the supervisor to stop the service: with the reason it failed,
    /// or (dropped) because nobody needs it any more.
    stop: Option<oneshot::Sender<String>>,
    /// The exit code once the service has exited.
    exited: watch::Receiver<Option<i32>>,
}

impl Instance {
    /// Stops the service, which failed for `reason`.
    fn fail(mut self, reason: String) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reason);
        }
    }
}

/// A hold on a running service: it runs while any hold lives.
pub struct ServiceLease {
    entry: Arc<Entry>,
    _members: Vec<Membership>,
    /// Its name in the session that started it.
    named: Option<Named>,
}

impl ServiceLease {
    /// The service's address on the engine's network.
    pub fn address(&self) -> Ipv4Addr {
        match self.entry.started.get() {
            Some(Ok(instance)) => instance.address,
            _ => unreachable!("a lease is handed out only for a started service"),
        }
    }

    /// The service's host name.
    pub fn hostname(&self) -> &str {
        &self.entry.hostname
    }

    /// Kills the service, rather than asking it to stop, when the last
    /// hold is released.
    pub fn kill_on_release(&self) {
        self.entry.kill.store(true, Ordering::SeqCst);
    }

    /// Names it in `report`'s session, for every container of the session.
    pub(crate) fn name_in(&mut self, report: &Arc<Report>) {
        self.named = Some(report.name(self.hostname(), self.address()));
    }

    /// Lets go of the service; the last holder waits until it has stopped,
    /// so that its sessions are told and its address is free.
    pub async fn release(self) {
        let ServiceLease { entry, _members, named } = self;
        drop(named);
        let exited = entry
            .started
            .get()
            .and_then(|s| s.as_ref().ok())
            .map(|i| i.exited.clone());
        let last = Arc::strong_count(&entry) == 1;
        drop(entry);
        if let (true, Some(mut exited)) = (last, exited) {
            let _ = exited.wait_for(Option::is_some).await;
        }
    }
}

impl Services {
    /// A hold on the service `def` over `inputs` (its input trees), started
    /// if nobody runs it yet; its progress goes to `reports`.
    pub(crate) async fn acquire(
        &self,
        cx: &Context<'_>,
        def: &ServiceDef,
        inputs: &[Option<SnapshotId>],
        reports: &[Arc<Report>],
    ) -> Result<ServiceLease, Cause> {
        let mut id = KeyBuilder::new("kiln/service/v1");
        id.bytes(&serde_json::to_vec(def).expect("definitions serialize"));
        for input in inputs {
            id.bytes(&input.map_or(0, |s| s.0).to_le_bytes());
        }
        let key = id.finish();
        let entry = {
            let mut entries = self.entries.lock().expect("services lock");
            match entries.get(&key).and_then(Weak::upgrade) {
                Some(entry) => entry,
                None => {
                    entries.retain(|_, e| e.strong_count() > 0);
                    let description = cx.secrets().scrub(&def.describe());
                    let entry = Arc::new(Entry {
                        hostname: def.hostname.clone(),
                        started: OnceCell::new(),
                        audience: Arc::default(),
                        subject: Subject::uncounted(key, description),
                        kill: Arc::default(),
                    });
                    entries.insert(key, Arc::downgrade(&entry));
                    entry
                }
            }
        };
        let lease = ServiceLease {
            named: None,
            _members: reports
                .iter()
                .map(|r| entry.audience.join(r, entry.subject.clone()))
                .collect(),
            entry: entry.clone(),
        };
        let started = entry
            .started
            .get_or_init(|| start(cx, def, inputs, reports, &entry))
            .await;
        match started {
            Ok(instance) => match *instance.exited.borrow() {
                None => Ok(lease),
                Some(code) => Err(Cause::Invalid(format!(
                    "the service exited with code {code} (see its output with `kiln logs`)"
                ))),
            },
            Err(e) => Err(e.clone()),
        }
    }
}

/// Starts a service for its first holder.
async fn start(
    cx: &Context<'_>,
    def: &ServiceDef,
    inputs: &[Option<SnapshotId>],
    reports: &[Arc<Report>],
    entry: &Entry,
) -> Result<Instance, Cause> {
    let Some(network) = cx.network().cloned() else {
        return Err(Cause::Invalid(
            "services need the engine's container network, which is off (set `[network] enabled = true` in \
             kiln's config)"
                .into(),
        ));
    };
    entry.audience.emit(EventKind::Started, None);
    let how = Supervision {
        audience: entry.audience.clone(),
        kill: entry.kill.clone(),
        secrets: cx.secrets().clone(),
    };
    let started = match &def.kind {
        ServiceKind::Container { exec, ports } => {
            container::start(cx, &def.hostname, exec, ports, inputs, reports, how).await
        }
        ServiceKind::Host { host, ports } => host::start(&network, host, ports, how).await,
    };
    if started.is_ok() {
        let ready = EventKind::Notice {
            message: "ready".into(),
        };
        entry.audience.emit(ready, None);
    }
    started
}

/// What a service's supervisor reports to and how it stops the service.
struct Supervision {
    audience: Arc<Audience>,
    kill: Arc<AtomicBool>,
    secrets: Arc<crate::secrets::Secrets>,
}

impl Supervision {
    /// Tells that the service failed before it ran (its supervisor tells
    /// how it ended once it runs).
    fn failed(&self, cause: Cause) -> Cause {
        let message = self.secrets.scrub(&cause.to_string());
        self.audience.emit(EventKind::Failed { message }, None);
        cause
    }
}

/// The services an exec is bound to, held while it runs.
pub(crate) struct Bound(Vec<(String, ServiceLease)>);

impl Bound {
    /// `/etc/hosts` lines naming each service by its host name and alias,
    /// and the services the sessions in `reports` started (by host name).
    pub(crate) fn hosts_with(&self, reports: &[Arc<Report>]) -> String {
        let mut lines: Vec<String> = self.lines().collect();
        for line in reports.iter().flat_map(|r| r.hosts()) {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines.concat()
    }

    /// Lets go of the services (see [`ServiceLease::release`]).
    pub(crate) async fn release(self) {
        futures::future::join_all(self.0.into_iter().map(|(_, lease)| lease.release())).await;
    }

    /// `/etc/hosts` lines naming each service by its host name and alias.
    pub(crate) fn hosts(&self) -> String {
        self.lines().collect()
    }

    fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.0
            .iter()
            .map(|(alias, lease)| format!("{}\t{} {alias}\n", lease.address(), lease.hostname()))
    }
}

/// Starts (or joins) the services of `bindings`, whose inputs are among
/// `inputs`; fails with the first one that does not become ready.
pub(crate) async fn bind(
    cx: &Context<'_>,
    bindings: &[Binding],
    inputs: &[Option<SnapshotId>],
    reports: &[Arc<Report>],
) -> Result<Bound, SolveError> {
    let leases = try_join_all(bindings.iter().map(|b| async move {
        let own = &inputs[b.first_input..b.first_input + b.inputs];
        let lease = cx
            .services()
            .acquire(cx, &b.service, own, reports)
            .await
            .map_err(|cause| SolveError::op(format!("start {} (aliased as {})", b.service.hostname, b.alias), cause))?;
        Ok::<_, SolveError>((b.alias.clone(), lease))
    }))
    .await?;
    Ok(Bound(leases))
}
