//! Services: `Container.asService` and its ports and bindings, `Service`,
//! `Port`, and the host's side (`Host.service`, `Host.tunnel`,
//! `Service.up`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::Value;
use kiln_graph::KeyBuilder;
use kiln_solver::Input;
use kiln_solver::services::{ExposedPort, PortForward, Protocol, ServiceDef, ServiceKind, ServiceLease, forward};
use tokio::task::JoinSet;

use super::container::exec_of;
use crate::api::{Api, Output, Registry, container, expand};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Container, Object, Service, ServiceSource};

pub fn register(r: &mut Registry) {
    r.add("Container", "asService", resolver!(as_service));
    r.add("Container", "up", resolver!(container_up));
    r.add("Container", "withExposedPort", resolver!(with_exposed_port));
    r.add("Container", "withoutExposedPort", resolver!(without_exposed_port));
    r.add("Container", "exposedPorts", resolver!(exposed_ports));
    r.add("Container", "withServiceBinding", resolver!(with_service_binding));
    r.add("Host", "service", resolver!(host_service));
    r.add("Host", "tunnel", resolver!(host_tunnel));
    r.add("Service", "id", resolver!(id));
    r.add("Service", "sync", resolver!(id));
    r.add("Service", "hostname", resolver!(hostname));
    r.add("Service", "withHostname", resolver!(with_hostname));
    r.add("Service", "ports", resolver!(ports));
    r.add("Service", "endpoint", resolver!(endpoint));
    r.add("Service", "start", resolver!(start));
    r.add("Service", "stop", resolver!(stop));
    r.add("Service", "up", resolver!(up));
    r.add("Port", "id", resolver!(id));
    r.add("Port", "port", resolver!(port_number));
    r.add("Port", "protocol", resolver!(port_protocol));
    r.add("Port", "description", resolver!(port_description));
    r.add(
        "Port",
        "experimentalSkipHealthcheck",
        resolver!(port_skips_health_check),
    );
}

/// The services a session started (`start`, `up`, tunnels), by ID: they
/// run until stopped or until the session ends.
#[derive(Default)]
pub struct Held(Mutex<HashMap<String, Arc<Running>>>);

/// A service a session holds, with the loopback ports that lead to it.
struct Running {
    lease: ServiceLease,
    /// `(host port, service port)`.
    forwards: Vec<(u16, u16)>,
    _tasks: JoinSet<()>,
}

fn out(s: Service) -> Result<Output, ApiError> {
    Ok(Output::Object(Object::Service(Box::new(s))))
}

fn service(obj: Object) -> Result<Service, ApiError> {
    match obj {
        Object::Service(s) => Ok(*s),
        other => Err(ApiError::internal(format!(
            "expected a Service, got a {}",
            other.type_name()
        ))),
    }
}

/// The `service` argument.
fn arg_service(api: &Api, args: &Args) -> Result<Service, ApiError> {
    match api.arg_object(args, "service")? {
        Object::Service(s) => Ok(*s),
        other => Err(ApiError::invalid(format!(
            "argument service must be a Service ID, got a {}",
            other.type_name()
        ))),
    }
}

fn protocol(args: &Args) -> Protocol {
    match args.opt_string("protocol").as_deref() {
        Some("UDP") => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

fn port_arg(args: &Args, name: &str) -> Result<u16, ApiError> {
    let n = args
        .int(name)
        .ok_or_else(|| ApiError::invalid(format!("argument {name} is required")))?;
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::invalid(format!("{name} {n} is not a port number (1 to 65535)")))
}

/// The `ports` argument: `PortForward` inputs (a missing frontend is 0).
fn forwards(args: &Args) -> Result<Vec<PortForward>, ApiError> {
    args.list("ports")
        .iter()
        .map(|p| {
            Ok(PortForward {
                backend: port_arg(p, "backend")?,
                frontend: match p.int("frontend") {
                    None | Some(0) => 0,
                    Some(_) => port_arg(p, "frontend")?,
                },
                protocol: protocol(p),
            })
        })
        .collect()
}

/// The service's definition as the solver runs it, and its node inputs.
pub(super) fn definition(api: &Api, s: &Service) -> Result<(ServiceDef, Vec<Input>), ApiError> {
    let (kind, inputs) = match &s.source {
        ServiceSource::Container { container, args } => {
            let (exec, inputs) = exec_of(api, container, args.clone())?;
            let kind = ServiceKind::Container {
                exec: Box::new(exec),
                ports: container.exposed_ports.clone(),
            };
            (kind, inputs)
        }
        ServiceSource::Host { host, ports } => {
            let ports = ports
                .iter()
                .map(|p| PortForward {
                    frontend: if p.frontend == 0 { p.backend } else { p.frontend },
                    ..*p
                })
                .collect();
            let kind = ServiceKind::Host {
                host: host.clone(),
                ports,
            };
            (kind, Vec::new())
        }
        ServiceSource::Tunnel { .. } => {
            return Err(ApiError::invalid(
                "a tunnel leads from the client's host to a service; it cannot be bound to a container",
            ));
        }
    };
    let def = ServiceDef {
        hostname: name_of(s),
        custom_hostname: s.hostname.is_some(),
        kind,
    };
    Ok((def, inputs))
}

/// The service's host name: the chosen one, else one derived from its
/// definition (13 characters, as Dagger's).
fn name_of(s: &Service) -> String {
    if let Some(name) = &s.hostname {
        return name.clone();
    }
    if let ServiceSource::Tunnel { .. } = s.source {
        return "127.0.0.1".into();
    }
    let json = serde_json::to_vec(&s.source).expect("services serialize");
    let key = KeyBuilder::new("kiln/api/hostname/v1").bytes(&json).finish();
    key.to_string()[..13].to_string()
}

async fn as_service(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    service_of(container(obj)?, &args).map(|s| Output::Object(Object::Service(Box::new(s))))
}

/// The service `Container.asService` (and `Container.up`) make.
fn service_of(c: Container, args: &Args) -> Result<Service, ApiError> {
    let mut argv = args.strings("args");
    if args.bool("expand") {
        argv = argv.iter().map(|a| expand(a, &c.env)).collect();
    }
    // No args: the default command, after the image's entrypoint unless
    // the pipeline set the default command itself (as Dagger does).
    let entrypoint = if argv.is_empty() {
        argv = c.default_args.clone();
        args.bool("useEntrypoint") || !c.default_args_set
    } else {
        args.bool("useEntrypoint")
    };
    if entrypoint {
        argv = c.entrypoint.iter().cloned().chain(argv).collect();
    }
    if argv.is_empty() {
        return Err(ApiError::invalid(
            "no service command has been set: pass args to asService, or give the container a default \
             command (withDefaultArgs) or an entrypoint",
        ));
    }
    Ok(Service {
        source: ServiceSource::Container {
            container: Box::new(c),
            args: argv,
        },
        hostname: None,
    })
}

async fn container_up(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let s = service_of(container(obj)?, &args)?;
    serve_up(&api, s, &args).await
}

async fn with_exposed_port(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let port = ExposedPort {
        port: port_arg(&args, "port")?,
        protocol: protocol(&args),
        description: args.opt_string("description"),
        skip_health_check: args.bool("experimentalSkipHealthcheck"),
    };
    c.exposed_ports
        .retain(|p| (p.port, p.protocol) != (port.port, port.protocol));
    c.exposed_ports.push(port);
    Ok(Output::Object(Object::Container(Box::new(c))))
}

async fn without_exposed_port(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let (port, protocol) = (port_arg(&args, "port")?, protocol(&args));
    c.exposed_ports.retain(|p| (p.port, p.protocol) != (port, protocol));
    Ok(Output::Object(Object::Container(Box::new(c))))
}

async fn exposed_ports(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let c = container(obj)?;
    Ok(Output::Objects(c.exposed_ports.into_iter().map(Object::Port).collect()))
}

async fn with_service_binding(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut c = container(obj)?;
    let alias = args.string("alias")?;
    let valid = alias.len() <= 63
        && alias
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "service alias {alias:?} is not a host name (letters, digits, '-', '.', '_'; at most 63)"
        )));
    }
    let bound = arg_service(&api, &args)?;
    // Fails now, not when an exec runs, for what cannot be bound.
    definition(&api, &bound)?;
    c.services.retain(|(a, _)| *a != alias);
    c.services.push((alias, bound));
    Ok(Output::Object(Object::Container(Box::new(c))))
}

/// Refuses what reaches the client's loopback through the engine's, when
/// they are not the same.
pub(super) fn local_only(api: &Api, what: &str) -> Result<(), ApiError> {
    if api.session.host().shares_network() {
        return Ok(());
    }
    Err(ApiError::NotImplemented(format!(
        "{what} with a remote engine (kiln engine --listen): the engine's loopback is not the client's, and \
         forwarding through the client's connection is not built yet"
    )))
}

async fn host_service(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    local_only(&api, "Host.service")?;
    let ports = forwards(&args)?;
    if ports.is_empty() {
        return Err(ApiError::invalid(
            "no ports specified: Host.service needs at least one port",
        ));
    }
    out(Service {
        source: ServiceSource::Host {
            host: args.opt_string("host").unwrap_or_else(|| "localhost".into()),
            ports,
        },
        hostname: None,
    })
}

async fn host_tunnel(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let inner = arg_service(&api, &args)?;
    out(Service {
        source: ServiceSource::Tunnel {
            service: Box::new(inner),
            ports: forwards(&args)?,
            native: args.bool("native"),
        },
        hostname: None,
    })
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn hostname(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(name_of(&service(obj)?)))
}

async fn with_hostname(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mut s = service(obj)?;
    s.hostname = Some(args.string("hostname")?);
    out(s)
}

/// The ports a service listens on (a tunnel's: once started, on the host).
async fn listening(api: &Arc<Api>, obj: &Object) -> Result<Vec<ExposedPort>, ApiError> {
    let s = service(obj.clone())?;
    let tcp = |port| ExposedPort {
        port,
        protocol: Protocol::Tcp,
        description: None,
        skip_health_check: false,
    };
    Ok(match &s.source {
        ServiceSource::Container { container, .. } => container.exposed_ports.clone(),
        ServiceSource::Host { ports, .. } => ports
            .iter()
            .map(|p| tcp(if p.frontend == 0 { p.backend } else { p.frontend }))
            .collect(),
        ServiceSource::Tunnel { .. } => hold(api, obj, &s).await?.forwards.iter().map(|f| tcp(f.0)).collect(),
    })
}

async fn ports(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Objects(
        listening(&api, &obj).await?.into_iter().map(Object::Port).collect(),
    ))
}

async fn endpoint(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let s = service(obj.clone())?;
    let port = match args.int("port") {
        Some(_) => port_arg(&args, "port")?,
        None => listening(&api, &obj)
            .await?
            .first()
            .map(|p| p.port)
            .ok_or_else(|| ApiError::invalid("no ports exposed: pass a port, or use withExposedPort"))?,
    };
    let address = format!("{}:{port}", name_of(&s));
    Ok(Output::string(match args.opt_string("scheme") {
        Some(scheme) => format!("{scheme}://{address}"),
        None => address,
    }))
}

async fn start(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let s = service(obj.clone())?;
    hold(&api, &obj, &s).await?;
    api.id(&obj)
}

async fn stop(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let id = api.nodes.id_of(&obj)?;
    let held = api.held.0.lock().expect("held lock").remove(&id);
    if let Some(running) = held
        && args.bool("kill")
    {
        running.lease.kill_on_release();
    }
    Ok(Output::Value(Value::String(id)))
}

async fn up(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    serve_up(&api, service(obj)?, &args).await
}

/// `up`: the service's ports on the host's loopback (the same numbers, or
/// random ones), until the session ends.
async fn serve_up(api: &Arc<Api>, s: Service, args: &Args) -> Result<Output, ApiError> {
    let tunnel = Service {
        source: ServiceSource::Tunnel {
            service: Box::new(s),
            ports: forwards(args)?,
            native: !args.bool("random"),
        },
        hostname: None,
    };
    let obj = Object::Service(Box::new(tunnel.clone()));
    let running = hold(api, &obj, &tunnel).await?;
    for (host, service) in &running.forwards {
        tracing::info!("service port {service} is reachable at 127.0.0.1:{host}");
    }
    futures::future::pending::<()>().await;
    Ok(Output::Null)
}

/// The session's hold on a service, started on first use.
async fn hold(api: &Arc<Api>, obj: &Object, s: &Service) -> Result<Arc<Running>, ApiError> {
    let id = api.nodes.id_of(obj)?;
    if let Some(running) = api.held.0.lock().expect("held lock").get(&id) {
        return Ok(running.clone());
    }
    let running = Arc::new(match &s.source {
        ServiceSource::Tunnel { service, ports, native } => open_tunnel(api, service, ports, *native).await?,
        _ => {
            let (def, inputs) = definition(api, s)?;
            Running {
                lease: api.session.start_service(&def, &inputs).await?,
                forwards: Vec::new(),
                _tasks: JoinSet::new(),
            }
        }
    });
    let mut held = api.held.0.lock().expect("held lock");
    Ok(held.entry(id).or_insert(running).clone())
}

/// Starts `inner` and opens loopback ports of the host that lead to it.
async fn open_tunnel(api: &Api, inner: &Service, ports: &[PortForward], native: bool) -> Result<Running, ApiError> {
    local_only(api, "a tunnel to the client's host (Service.up, Host.tunnel)")?;
    let (def, inputs) = definition(api, inner)?;
    let wanted: Vec<PortForward> = if ports.is_empty() {
        let listened: Vec<u16> = match &def.kind {
            ServiceKind::Container { ports, .. } => ports
                .iter()
                .filter(|p| p.protocol == Protocol::Tcp)
                .map(|p| p.port)
                .collect(),
            ServiceKind::Host { ports, .. } => ports.iter().map(|p| p.frontend).collect(),
        };
        listened
            .into_iter()
            .map(|backend| PortForward {
                frontend: 0,
                backend,
                protocol: Protocol::Tcp,
            })
            .collect()
    } else {
        ports.to_vec()
    };
    if wanted.is_empty() {
        return Err(ApiError::invalid(
            "the service exposes no TCP port to open on the host: use withExposedPort, or pass ports",
        ));
    }
    if let Some(p) = wanted.iter().find(|p| p.protocol == Protocol::Udp) {
        return Err(ApiError::invalid(format!(
            "port {}/udp: kiln opens only TCP ports on the host for now",
            p.backend
        )));
    }
    let lease = api.session.start_service(&def, &inputs).await?;
    let mut tasks = JoinSet::new();
    let mut opened = Vec::new();
    for p in wanted {
        let port = match p.frontend {
            0 if native => p.backend,
            n => n,
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| ApiError::invalid(format!("cannot open port {port} on the host's loopback: {e}")))?;
        let local = listener.local_addr().map_err(ApiError::internal)?.port();
        tasks.spawn(forward(listener, lease.address().to_string(), p.backend));
        opened.push((local, p.backend));
    }
    Ok(Running {
        lease,
        forwards: opened,
        _tasks: tasks,
    })
}

fn port(obj: Object) -> Result<ExposedPort, ApiError> {
    match obj {
        Object::Port(p) => Ok(p),
        other => Err(ApiError::internal(format!(
            "expected a Port, got a {}",
            other.type_name()
        ))),
    }
}

async fn port_number(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Value(Value::from(port(obj)?.port)))
}

async fn port_protocol(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let name = match port(obj)?.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    Ok(Output::Value(Value::Enum(async_graphql::Name::new(name))))
}

async fn port_description(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(port(obj)?.description.map(Output::string).unwrap_or(Output::Null))
}

async fn port_skips_health_check(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::Value(Value::Boolean(port(obj)?.skip_health_check)))
}
