//! The OCI runtime spec (config.json) of a kiln container.

use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_mounts,
};

use crate::user::Identity;

/// Capabilities granted to container processes (Docker's default set).
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A mount inside the container.
#[derive(Debug, Clone)]
pub enum ContainerMount {
    /// Bind a host path (prepared by kiln) at `target`.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path in the container.
        target: String,
        /// Mount read-only.
        readonly: bool,
    },
    /// A fresh tmpfs at `target`.
    Tmpfs {
        /// Path in the container.
        target: String,
    },
}

impl ContainerMount {
    /// The path in the container.
    pub fn target(&self) -> &str {
        match self {
            ContainerMount::Bind { target, .. } | ContainerMount::Tmpfs { target } => target,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Who runs it.
    pub identity: Identity,
}

/// The containers' host name.
pub const HOSTNAME: &str = "kiln";

/// Builds the runtime spec for a container whose rootfs is `rootfs`, in
/// the network namespace mounted at `network` (else a new one).
pub fn build(
    rootfs: PathBuf,
    process: &ProcessSpec,
    mounts: &[ContainerMount],
    network: Option<&std::path::Path>,
) -> Result<Spec, oci_spec::OciSpecError> {
    let caps: std::collections::HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let user = UserBuilder::default()
        .uid(process.identity.uid)
        .gid(process.identity.gid)
        .additional_gids(process.identity.additional_gids.clone())
        .build()?;
    let proc = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(process.args.clone())
        .env(process.env.clone())
        .cwd(process.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()?;
    let mut all_mounts: Vec<Mount> = get_default_mounts();
    for m in mounts {
        all_mounts.push(match m {
            ContainerMount::Bind {
                source,
                target,
                readonly,
            } => {
                let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
                if *readonly {
                    options.push("ro".into());
                }
                MountBuilder::default()
                    .destination(target)
                    .typ("bind")
                    .source(source)
                    .options(options)
                    .build()?
            }
            ContainerMount::Tmpfs { target } => MountBuilder::default()
                .destination(target)
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into()])
                .build()?,
        });
    }
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| match (t, network) {
        (LinuxNamespaceType::Network, Some(path)) => LinuxNamespaceBuilder::default().typ(t).path(path).build(),
        _ => LinuxNamespaceBuilder::default().typ(t).build(),
    })
    .collect::<Result<Vec<_>, _>>()?;
    let defaults = Spec::default();
    let default_linux = defaults.linux().clone().unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .build()?;
    let mut spec = defaults;
    spec.set_process(Some(proc))
        .set_root(Some(RootBuilder::default().path(rootfs).readonly(false).build()?))
        .set_hostname(Some(HOSTNAME.to_string()))
        .set_mounts(Some(all_mounts))
        .set_linux(Some(linux));
    Ok(spec)
}
