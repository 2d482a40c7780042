//! The values the API hands out (containers, directories, files, ...).
//! They are plain data: operation graph nodes are referred to by definition
//! digest and live in the [`crate::nodes::Nodes`] registry, so a value can be
//! serialized into an ID and loaded back in a later session.

use kiln_graph::{CacheSharing, Key};
use kiln_solver::services::{ExposedPort, PortForward};
use serde::{Deserialize, Serialize};

/// One output tree of a graph node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    /// Definition digest of the node.
    pub node: Key,
    /// Which of its outputs.
    pub output: usize,
}

/// A tree (`None`: empty) and a path in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// The tree.
    pub tree: Option<TreeRef>,
    /// Absolute path of the directory in the tree.
    pub path: String,
}

/// A file in a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// The tree.
    pub tree: Option<TreeRef>,
    /// Absolute path of the file in the tree.
    pub path: String,
}

/// What is mounted at a container path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A directory or file of a tree (writes produce a new tree).
    Tree {
        /// The tree.
        tree: Option<TreeRef>,
        /// Path in the tree.
        path: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// A fresh tmpfs.
    Temp,
    /// A cache volume.
    Cache {
        /// The volume's key.
        key: String,
        /// How concurrent execs share it.
        sharing: CacheSharing,
        /// Owner of a new volume's root (`user[:group]`).
        owner: Option<String>,
        /// Contents a new volume starts with.
        source: Option<Directory>,
    },
    /// A secret as a read-only file.
    Secret {
        /// The secret.
        secret: Secret,
        /// Owner (`user[:group]`; the exec's user when absent).
        owner: Option<String>,
        /// Permission bits.
        mode: u32,
    },
}

/// A secret: its name and the keyed hash of its value; the plaintext stays
/// in engine memory (a `secret(uri)` secret can be read again from its URI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Name (for `setSecret`) or the URI it came from.
    pub name: String,
    /// Keyed hash of the value.
    pub digest: String,
    /// Where the value comes from, for `secret(uri)`.
    pub uri: Option<String>,
}

/// A mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    /// Absolute path in the container.
    pub target: String,
    /// What is mounted.
    pub source: MountSource,
}

/// A container: a rootfs, its image configuration and its mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The root filesystem (`None`: empty).
    pub rootfs: Option<TreeRef>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: String,
    /// User spec.
    pub user: String,
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Default arguments (the image's CMD).
    pub default_args: Vec<String>,
    /// Whether the pipeline set the default arguments (`withDefaultArgs`),
    /// rather than the image: then a service runs them without the
    /// entrypoint, as Dagger does.
    #[serde(default)]
    pub default_args_set: bool,
    /// Labels, in order.
    pub labels: Vec<(String, String)>,
    /// Mounts, in order.
    pub mounts: Vec<ContainerMount>,
    /// The last exec (for stdout, stderr, exit code).
    pub last_exec: Option<Key>,
    /// The image reference it was created from.
    pub image_ref: Option<String>,
    /// Environment variables set from secrets.
    #[serde(default)]
    pub secret_env: Vec<(String, Secret)>,
    /// The ports it listens on as a service.
    #[serde(default)]
    pub exposed_ports: Vec<ExposedPort>,
    /// The services its execs reach, by alias.
    #[serde(default)]
    pub services: Vec<(String, Service)>,
    /// Paths the image declares as volumes (image config only).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The signal that stops its process (image config only).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Docker's health check (image config only).
    #[serde(default)]
    pub healthcheck: Option<kiln_oci::Healthcheck>,
    /// Annotations of the image manifest it exports as, in order.
    #[serde(default)]
    pub annotations: Vec<(String, String)>,
}

impl Container {
    /// An empty container (no rootfs, no config) for `platform`.
    pub fn empty(platform: String) -> Self {
        Self {
            rootfs: None,
            platform,
            env: Vec::new(),
            workdir: "/".into(),
            user: String::new(),
            entrypoint: Vec::new(),
            default_args: Vec::new(),
            default_args_set: false,
            labels: Vec::new(),
            mounts: Vec::new(),
            last_exec: None,
            image_ref: None,
            secret_env: Vec::new(),
            exposed_ports: Vec::new(),
            services: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
            healthcheck: None,
            annotations: Vec::new(),
        }
    }
}

/// What a service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceSource {
    /// A container's process (`args` as it will run them).
    Container {
        /// The container.
        container: Box<Container>,
        /// The command line.
        args: Vec<String>,
    },
    /// Ports of the client's host.
    Host {
        /// Host name or address they are reached at on the host.
        host: String,
        /// The ports.
        ports: Vec<PortForward>,
    },
    /// A service reached from the client's host on loopback ports.
    Tunnel {
        /// The service.
        service: Box<Service>,
        /// Its ports to open (empty: all of them).
        ports: Vec<PortForward>,
        /// Open each on the same port number (else a random one).
        native: bool,
    },
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// What it runs.
    pub source: ServiceSource,
    /// A host name the pipeline chose.
    pub hostname: Option<String>,
}

/// A git remote (`Query.git`), with its credentials as secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRepo {
    /// The URL as git takes it.
    pub url: String,
    /// User name for the token.
    pub username: String,
    /// A token for HTTP Basic auth.
    pub token: Option<Secret>,
    /// A whole `Authorization` header.
    pub header: Option<Secret>,
    /// `known_hosts` lines for an ssh remote.
    #[serde(default)]
    pub ssh_known_hosts: String,
    /// The client's SSH agent socket, for an ssh remote.
    #[serde(default)]
    pub ssh_agent_socket: Option<String>,
    /// `keepGitDir: false` (deprecated in Dagger): trees drop `.git`.
    #[serde(default)]
    pub discard_git_dir: bool,
}

/// A ref of a git remote, as asked for (resolved when used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRef {
    /// The remote.
    pub repo: GitRepo,
    /// `HEAD`, a branch, tag or full ref name, or a commit hash.
    pub name: String,
}

/// Every kind of object the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// The root query object.
    Query,
    /// The client's host.
    Host,
    /// A container.
    Container(Box<Container>),
    /// A directory.
    Directory(Directory),
    /// A file.
    File(File),
    /// An environment variable of a container.
    EnvVariable {
        /// Its name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A label of a container.
    Label {
        /// Its name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A secret.
    Secret(Secret),
    /// A cache volume (by key).
    CacheVolume {
        /// The volume's key.
        key: String,
    },
    /// A service.
    Service(Box<Service>),
    /// A port a service exposes.
    Port(ExposedPort),
    /// A git remote.
    GitRepository(Box<GitRepo>),
    /// A ref of a git remote.
    GitRef(Box<GitRef>),
    /// A unix socket of the client's host (`Host.unixSocket`).
    Socket {
        /// Its path.
        path: String,
    },
}

impl Object {
    /// The GraphQL type name of the object.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Query => "Query",
            Object::Host => "Host",
            Object::Container(_) => "Container",
            Object::Directory(_) => "Directory",
            Object::File(_) => "File",
            Object::EnvVariable { .. } => "EnvVariable",
            Object::Label { .. } => "Label",
            Object::CacheVolume { .. } => "CacheVolume",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::Port(_) => "Port",
            Object::GitRepository(_) => "GitRepository",
            Object::GitRef(_) => "GitRef",
            Object::Socket { .. } => "Socket",
        }
    }

    /// The graph nodes the object refers to.
    pub fn nodes(&self) -> Vec<Key> {
        let trees = |t: &Option<TreeRef>| t.map(|t| t.node);
        match self {
            Object::Container(c) => container_nodes(c),
            Object::Directory(d) => trees(&d.tree).into_iter().collect(),
            Object::File(f) => trees(&f.tree).into_iter().collect(),
            Object::Service(s) => service_nodes(s),
            _ => Vec::new(),
        }
    }
}

fn container_nodes(c: &Container) -> Vec<Key> {
    let trees = |t: &Option<TreeRef>| t.map(|t| t.node);
    c.rootfs
        .map(|t| t.node)
        .into_iter()
        .chain(c.mounts.iter().filter_map(|m| match &m.source {
            MountSource::Tree { tree, .. } => trees(tree),
            MountSource::Cache { source: Some(d), .. } => trees(&d.tree),
            _ => None,
        }))
        .chain(c.last_exec)
        .chain(c.services.iter().flat_map(|(_, s)| service_nodes(s)))
        .collect()
}

fn service_nodes(s: &Service) -> Vec<Key> {
    match &s.source {
        ServiceSource::Container { container, .. } => container_nodes(container),
        ServiceSource::Host { .. } => Vec::new(),
        ServiceSource::Tunnel { service, .. } => service_nodes(service),
    }
}
