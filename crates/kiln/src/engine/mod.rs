//! One engine per state dir, many clients: `kiln engine` serves the state
//! dir's engine on a Unix socket inside it, and `kiln run`, `kiln session`
//! and `kiln query` open their session there when it runs.

pub mod client;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use kiln_api::{Api, Server};
use kiln_solver::explain::Explanation;
use kiln_solver::{Events, Session, Stats};

use self::client::Attached;

/// This process's session: on the engine serving its state dir when one
/// runs, else on an engine of its own.
pub enum Client {
    /// An engine in this process.
    Local(Session),
    /// The engine serving the state dir.
    Engine {
        attached: Arc<Attached>,
        state_dir: PathBuf,
    },
}

impl Client {
    /// A session on the engine serving `state_dir` (none running: `None`).
    pub async fn on_engine(
        state_dir: &Path,
        options: kiln_solver::SessionOptions,
        cwd: &Path,
    ) -> anyhow::Result<Option<Self>> {
        let attached = client::attach(&state_dir.join(protocol::SOCKET), options, cwd).await?;
        Ok(attached.map(|attached| Client::Engine {
            attached,
            state_dir: state_dir.to_path_buf(),
        }))
    }

    /// The session's progress events.
    pub fn events(&self) -> &Events {
        match self {
            Client::Local(session) => session.events(),
            Client::Engine { attached, .. } => attached.events(),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        match self {
            Client::Local(session) => session.engine().store().root(),
            Client::Engine { state_dir, .. } => state_dir,
        }
    }

    /// The API server of the session, for a client whose relative host
    /// paths are relative to `cwd`, accepting `token`.
    pub fn server(&self, cwd: PathBuf, token: String) -> anyhow::Result<Server> {
        Ok(match self {
            Client::Local(session) => {
                Server::new(Api::new(session.clone(), cwd), token).context("building the schema")?
            }
            Client::Engine { attached, .. } => Server::forwarding(attached.forward(), token),
        })
    }

    /// Ends the session's work: the cache is made durable; what the session
    /// did and why its operations missed the cache.
    pub async fn finish(&self) -> (Stats, Vec<Explanation>) {
        match self {
            Client::Local(session) => {
                if let Err(e) = session.engine().store().flush() {
                    eprintln!("kiln: warning: could not make the cache durable: {e}");
                }
                (session.stats(), session.explanations())
            }
            Client::Engine { attached, .. } => attached.finish().await.unwrap_or_else(|e| {
                eprintln!("kiln: warning: {e:#}");
                Default::default()
            }),
        }
    }
}
