//! Running processes in containers: OCI runtime specs, crun/runc, overlayfs
//! rootfs and tree mounts in a private mount namespace, stdio capture, and
//! resolution of users against the image's `/etc/passwd`.

pub mod cgroups;
pub mod emulation;
pub mod host;
pub mod mounts;
pub mod net;
pub mod runtime;
pub mod spec;
pub mod user;

pub use cgroups::remove_leaked_cgroups;
pub use emulation::EmulationError;
pub use mounts::Overlay;
pub use runtime::{
    Bind, ExecError, ExecOutput, LiveOutput, RunSpec, Runtime, RuntimeKind, Signaller, Started, Stream, TreeMount,
};
pub use spec::ProcessSpec;
pub use user::{Identity, UserError};
