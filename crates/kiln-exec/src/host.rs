//! Facts about the host that decide how containers are started.

use std::path::{Path, PathBuf};

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers, with a v2 hierarchy at /sys/fs/cgroup/unified
    /// (crun refuses this; kiln hides the v2 mount from it).
    Hybrid,
    /// cgroup v1 only.
    Legacy,
}

fn fs_type(path: &Path) -> Option<i64> {
    rustix::fs::statfs(path).ok().map(|s| s.f_type)
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Detects the cgroup layout from the filesystem types under /sys/fs/cgroup.
pub fn cgroup_layout() -> CgroupLayout {
    if fs_type(Path::new("/sys/fs/cgroup")) == Some(CGROUP2_SUPER_MAGIC) {
        CgroupLayout::Unified
    } else if fs_type(Path::new("/sys/fs/cgroup/unified")) == Some(CGROUP2_SUPER_MAGIC) {
        CgroupLayout::Hybrid
    } else {
        CgroupLayout::Legacy
    }
}

/// Finds an executable by name in `PATH` (or checks an explicit path).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
