//! Host services: an address of their own on the engine's network whose
//! ports lead to ports of the host (the engine's host, which is the
//! client's for a local engine).

use std::sync::Arc;

use kiln_exec::net::Network;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::{Instance, PortForward, Protocol, Supervision, forward};
use crate::Cause;
use crate::error::Context as _;
use crate::events::EventKind;

/// Starts forwarding the service's ports to `host`'s.
pub(super) async fn start(
    network: &Arc<Network>,
    host: &str,
    ports: &[PortForward],
    how: Supervision,
) -> Result<Instance, Cause> {
    if let Some(p) = ports.iter().find(|p| p.protocol == Protocol::Udp) {
        return Err(how.failed(Cause::Invalid(format!(
            "port {}/udp: kiln forwards only TCP ports to the host for now",
            p.backend
        ))));
    }
    let (network, wanted) = (network.clone(), ports.to_vec());
    let (attachment, listeners) = tokio::task::spawn_blocking(move || {
        let attachment = network.attach()?;
        let listeners = wanted
            .iter()
            .map(|p| {
                attachment
                    .listen(p.frontend)
                    .context(|| format!("listening on port {}", p.frontend))
            })
            .collect::<Result<Vec<_>, Cause>>()?;
        Ok::<_, Cause>((attachment, listeners))
    })
    .await
    .map_err(|e| Cause::Internal(e.to_string()))
    .and_then(|made| made)
    .map_err(|e| how.failed(e))?;
    let mut forwards = JoinSet::new();
    for (listener, port) in listeners.into_iter().zip(ports) {
        let listener = tokio::net::TcpListener::from_std(listener)
            .context(|| "listening".to_string())
            .map_err(|e| how.failed(e))?;
        forwards.spawn(forward(listener, host.to_string(), port.backend));
    }
    let (stop, stopped) = oneshot::channel::<String>();
    let (exit, exited) = watch::channel(None);
    let address = attachment.address();
    tokio::spawn(async move {
        let since = std::time::Instant::now();
        let _ = stopped.await;
        forwards.shutdown().await;
        drop(attachment);
        how.audience.emit(
            EventKind::Done {
                duration: since.elapsed(),
            },
            None,
        );
        let _ = exit.send(Some(0));
    });
    Ok(Instance {
        address,
        stop: Some(stop),
        exited,
    })
}
