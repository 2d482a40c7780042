//! TCP forwarding: every connection accepted on a listener is joined to a
//! new connection to a target, bytes copied both ways until either side
//! closes.

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Forwards every connection accepted on `listener` to `host:port`
/// (resolved in the engine's own network namespace), until dropped.
pub async fn forward(listener: TcpListener, host: String, port: u16) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                let host = host.clone();
                connections.spawn(async move {
                    match TcpStream::connect((host.as_str(), port)).await {
                        Ok(mut outbound) => {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => tracing::debug!("forwarding to {host}:{port}: {e}"),
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}
