//! The mounts a container needs before the runtime starts: a private mount
//! namespace (so nothing leaks onto the host and everything vanishes with
//! the runtime process), the cgroup v2 mount hidden on hybrid hosts, and
//! overlayfs stacks for the rootfs and tree mounts. Everything is prepared
//! up front; [`MountPlan::apply`] only makes system calls, so it is safe to
//! run between fork and exec.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// An overlay stack to mount.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Lower layer directories, top-most first (at least one).
    pub lowers: Vec<PathBuf>,
    /// Upper and work directories for a writable mount; `None` mounts
    /// read-only.
    pub upper: Option<(PathBuf, PathBuf)>,
}

enum Step {
    MakePrivate,
    Unmount(CString),
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    RemountReadonly(CString),
}

/// A prepared sequence of mount operations.
#[derive(Default)]
pub struct MountPlan {
    steps: Vec<Step>,
}

/// Overlayfs mount options must fit in one page.
const MAX_OPTIONS: usize = 4000;

fn cstr(p: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(p.as_ref().as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn checked(p: &Path) -> io::Result<&str> {
    let s = p.to_str().filter(|s| !s.contains([',', ':', '\\'])).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "state path {} contains a character overlayfs options cannot hold (, : \\)",
                p.display()
            ),
        )
    })?;
    Ok(s)
}

impl MountPlan {
    /// Starts a plan that enters a private mount namespace and, when
    /// `hide_cgroup_v2` is set, unmounts `/sys/fs/cgroup/unified`.
    pub fn new(hide_cgroup_v2: bool) -> Self {
        let mut steps = vec![Step::MakePrivate];
        if hide_cgroup_v2 {
            steps.push(Step::Unmount(CString::new("/sys/fs/cgroup/unified").expect("no NUL")));
        }
        Self { steps }
    }

    /// Adds an overlay stack mounted at `target`.
    pub fn overlay(&mut self, overlay: &Overlay, target: &Path) -> io::Result<()> {
        let target_c = cstr(target)?;
        if overlay.upper.is_none() && overlay.lowers.len() == 1 {
            // overlayfs needs two lowers when read-only: bind the one layer.
            self.steps.push(Step::Mount {
                source: cstr(&overlay.lowers[0])?,
                target: target_c.clone(),
                fstype: CString::new("none").expect("no NUL"),
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            self.steps.push(Step::RemountReadonly(target_c));
            return Ok(());
        }
        let lowers = overlay
            .lowers
            .iter()
            .map(|p| checked(p))
            .collect::<io::Result<Vec<_>>>()?;
        let mut data = format!("lowerdir={}", lowers.join(":"));
        let mut flags = 0;
        match &overlay.upper {
            Some((upper, work)) => {
                data.push_str(&format!(
                    ",upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off,volatile",
                    checked(upper)?,
                    checked(work)?
                ));
            }
            None => flags |= libc::MS_RDONLY,
        }
        if data.len() > MAX_OPTIONS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("overlay stack of {} layers is too deep to mount", overlay.lowers.len()),
            ));
        }
        self.steps.push(Step::Mount {
            source: CString::new("overlay").expect("no NUL"),
            target: target_c,
            fstype: CString::new("overlay").expect("no NUL"),
            flags,
            data: Some(CString::new(data).map_err(|_| io::Error::other("NUL in options"))?),
        });
        Ok(())
    }

    /// Runs the plan in the current process. Only system calls: safe after
    /// `fork` in a multi-threaded parent.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls with valid NUL-terminated strings that
        // outlive the calls.
        unsafe {
            for step in &self.steps {
                match step {
                    Step::MakePrivate => {
                        if libc::unshare(libc::CLONE_NEWNS) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        let root = c"/";
                        if libc::mount(
                            std::ptr::null(),
                            root.as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::Unmount(target) => {
                        // Absent is fine: the point is that it is not there.
                        libc::umount2(target.as_ptr(), libc::MNT_DETACH);
                    }
                    Step::Mount {
                        source,
                        target,
                        fstype,
                        flags,
                        data,
                    } => {
                        let data_ptr = data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
                        if libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), *flags, data_ptr) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::RemountReadonly(target) => {
                        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                        if libc::mount(
                            std::ptr::null(),
                            target.as_ptr(),
                            std::ptr::null(),
                            flags,
                            std::ptr::null(),
                        ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
