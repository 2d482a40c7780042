//! Containers of a foreign CPU architecture, run through qemu-user-static.
//!
//! The kernel runs a foreign ELF binary through the interpreter that a
//! `binfmt_misc` handler names. kiln needs one handler per foreign
//! architecture, registered with the `F` flag: the kernel then opens the
//! interpreter once, at registration, so it works inside containers whose
//! rootfs does not hold it. [`ensure`] finds such a handler or registers
//! one (`qemu-<arch>` from the host's `qemu-<arch>-static`, as Docker's
//! binfmt installer does), and otherwise says what is missing and how to
//! fix it.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the kernel's `binfmt_misc` filesystem is mounted.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// ELF header fields that every handler below masks the same way: the class
/// and data bytes, the ABI version ignored, `e_type` either EXEC or DYN.
const MASK_64: &[u8; 20] = b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

/// How one foreign architecture is recognised and emulated.
struct Emulator {
    /// GOARCH name, as in OCI platforms.
    arch: &'static str,
    /// qemu's name for it (`qemu-<name>-static`).
    qemu: &'static str,
    /// The start of an ELF header of the architecture.
    magic: &'static [u8],
    /// Which bits of `magic` matter.
    mask: &'static [u8],
}

/// The architectures kiln can emulate (magic numbers as qemu's
/// `qemu-binfmt-conf.sh` lists them).
const EMULATORS: &[Emulator] = &[
    Emulator {
        arch: "arm64",
        qemu: "aarch64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        mask: MASK_64,
    },
    Emulator {
        arch: "amd64",
        qemu: "x86_64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        mask: MASK_64,
    },
    Emulator {
        arch: "arm",
        qemu: "arm",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        mask: MASK_64,
    },
    Emulator {
        arch: "riscv64",
        qemu: "riscv64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
        mask: MASK_64,
    },
    Emulator {
        arch: "ppc64le",
        qemu: "ppc64le",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
    },
    Emulator {
        arch: "s390x",
        qemu: "s390x",
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
    },
];

/// Why a foreign-architecture container cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    /// No emulator is known for the architecture.
    #[error("cannot run linux/{arch} containers on this {host} machine: kiln emulates only {known}")]
    Unsupported {
        /// The wanted architecture.
        arch: String,
        /// This machine's architecture.
        host: &'static str,
        /// The architectures kiln can emulate.
        known: String,
    },
    /// The kernel has no `binfmt_misc`, or it could not be mounted.
    #[error(
        "running linux/{arch} containers needs the kernel's binfmt_misc at {BINFMT_DIR}, which is not mounted \
         and could not be mounted ({source}): as root, run `mount -t binfmt_misc binfmt_misc {BINFMT_DIR}`"
    )]
    NoBinfmt {
        /// The wanted architecture.
        arch: String,
        /// Why mounting failed.
        source: io::Error,
    },
    /// `binfmt_misc` is switched off as a whole.
    #[error(
        "running linux/{arch} containers needs binfmt_misc, which is disabled: as root, run `echo 1 > {BINFMT_DIR}/status`"
    )]
    Disabled {
        /// The wanted architecture.
        arch: String,
    },
    /// No handler is registered and no interpreter was found to register.
    #[error(
        "running linux/{arch} containers needs qemu-user-static: no binfmt_misc handler for {arch} is registered \
         and {interpreter} is not on PATH (apt-get install qemu-user-static)"
    )]
    NoInterpreter {
        /// The wanted architecture.
        arch: String,
        /// The interpreter looked for.
        interpreter: String,
    },
    /// A handler exists, but containers cannot use it.
    #[error(
        "the binfmt_misc handler {name} for linux/{arch} is {problem}, so containers cannot run its interpreter: \
         as root, remove it (`echo -1 > {BINFMT_DIR}/{name}`) and kiln registers one with the F flag"
    )]
    Unusable {
        /// The wanted architecture.
        arch: String,
        /// The handler's name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Registering a handler failed (typically: not root).
    #[error(
        "cannot register {interpreter} as the binfmt_misc handler for linux/{arch} ({source}): run the kiln \
         engine as root once, or register it yourself (e.g. `update-binfmts --enable qemu-{qemu}` with the F flag)"
    )]
    Register {
        /// The wanted architecture.
        arch: String,
        /// qemu's name for it.
        qemu: &'static str,
        /// The interpreter kiln tried to register.
        interpreter: PathBuf,
        /// Why the kernel refused.
        source: io::Error,
    },
}

/// Architectures found runnable so far (the check reads a few files; done
/// once per architecture and process).
static READY: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Whether containers of `arch` (GOARCH name) run natively here.
pub fn is_native(arch: &str) -> bool {
    let host = host_arch();
    arch == host || (host == "amd64" && arch == "386")
}

/// This machine's architecture in GOARCH terms.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Makes sure that binaries of `arch` (GOARCH name) run in containers:
/// natively, through a usable `binfmt_misc` handler, or through one that
/// this call registers.
pub fn ensure(arch: &str) -> Result<(), EmulationError> {
    if is_native(arch) {
        return Ok(());
    }
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if ready.as_ref().is_some_and(|set| set.contains(arch)) {
        return Ok(());
    }
    let emulator = EMULATORS.iter().find(|e| e.arch == arch).ok_or_else(|| {
        let known: Vec<&str> = EMULATORS.iter().map(|e| e.arch).filter(|a| !is_native(a)).collect();
        EmulationError::Unsupported {
            arch: arch.to_string(),
            host: host_arch(),
            known: known.join(", "),
        }
    })?;
    prepare(Path::new(BINFMT_DIR), emulator, find_on_path)?;
    ready.get_or_insert_with(HashSet::new).insert(arch.to_string());
    Ok(())
}

/// [`ensure`] against the `binfmt_misc` mounted at `dir`, with `find`
/// looking interpreters up by name.
fn prepare(dir: &Path, emulator: &Emulator, find: impl Fn(&str) -> Option<PathBuf>) -> Result<(), EmulationError> {
    let arch = || emulator.arch.to_string();
    if !dir.join("register").exists() {
        mount_binfmt(dir).map_err(|source| EmulationError::NoBinfmt { arch: arch(), source })?;
    }
    if fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "disabled") {
        return Err(EmulationError::Disabled { arch: arch() });
    }
    if let Some((name, handler)) = registered(dir, emulator) {
        let problem = if !handler.enabled {
            "disabled"
        } else if !handler.flags.contains('F') {
            "registered without the F (fix binary) flag"
        } else {
            return Ok(());
        };
        return Err(EmulationError::Unusable {
            arch: arch(),
            name,
            problem,
        });
    }
    let interpreter_name = format!("qemu-{}-static", emulator.qemu);
    let interpreter = find(&interpreter_name).ok_or_else(|| EmulationError::NoInterpreter {
        arch: arch(),
        interpreter: interpreter_name,
    })?;
    fs::write(dir.join("register"), registration(emulator, &interpreter)).map_err(|source| EmulationError::Register {
        arch: arch(),
        qemu: emulator.qemu,
        interpreter,
        source,
    })
}

/// Mounts `binfmt_misc` at `dir`.
fn mount_binfmt(dir: &Path) -> io::Result<()> {
    use rustix::mount::{MountFlags, mount};
    mount("binfmt_misc", dir, "binfmt_misc", MountFlags::empty(), None).map_err(io::Error::from)
}

/// A handler as `binfmt_misc` describes it in its file.
#[derive(Debug, Default, PartialEq)]
struct Handler {
    enabled: bool,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Option<Vec<u8>>,
}

impl Handler {
    /// Parses a handler's file (`enabled`, `interpreter ...`, `flags: ...`,
    /// `offset N`, `magic HEX`, `mask HEX`); `None` for extension handlers.
    fn parse(text: &str) -> Option<Self> {
        let mut handler = Handler::default();
        let mut magic = None;
        for line in text.lines() {
            match line.split_once([' ', ':']) {
                _ if line == "enabled" => handler.enabled = true,
                Some(("flags", v)) => handler.flags = v.trim().to_string(),
                Some(("offset", v)) => handler.offset = v.trim().parse().ok()?,
                Some(("magic", v)) => magic = Some(hex::decode(v.trim()).ok()?),
                Some(("mask", v)) => handler.mask = Some(hex::decode(v.trim()).ok()?),
                _ => {}
            }
        }
        handler.magic = magic?;
        Some(handler)
    }

    /// Whether a file that starts with `header` is run by this handler.
    fn catches(&self, header: &[u8]) -> bool {
        let Some(window) = header.get(self.offset..self.offset + self.magic.len()) else {
            return false;
        };
        window.iter().zip(&self.magic).enumerate().all(|(i, (have, want))| {
            let m = self.mask.as_ref().and_then(|m| m.get(i)).copied().unwrap_or(0xff);
            have & m == want & m
        })
    }
}

/// The registered handler (name and description) that runs binaries of
/// `emulator`'s architecture, if any.
fn registered(dir: &Path, emulator: &Emulator) -> Option<(String, Handler)> {
    let entries = fs::read_dir(dir).ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            return None;
        }
        let handler = Handler::parse(&fs::read_to_string(entry.path()).ok()?)?;
        handler.catches(emulator.magic).then_some((name, handler))
    })
}

/// The line written to `register` for `emulator` run by `interpreter`:
/// flags F (the interpreter is opened now, so containers need not hold
/// it) and C (credentials from the binary, so setuid programs work).
fn registration(emulator: &Emulator, interpreter: &Path) -> String {
    let escape = |bytes: &[u8]| bytes.iter().map(|b| format!("\\x{b:02x}")).collect::<String>();
    format!(
        ":qemu-{}:M::{}:{}:{}:FC",
        emulator.qemu,
        escape(emulator.magic),
        escape(emulator.mask),
        interpreter.display()
    )
}

/// `name` in one of `PATH`'s directories (or `/usr/bin`), if it is there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64_HANDLER: &str = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: FC\noffset 0\n\
        magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn emulator(arch: &str) -> &'static Emulator {
        EMULATORS.iter().find(|e| e.arch == arch).unwrap()
    }

    #[test]
    fn a_handler_file_is_parsed_and_catches_its_architecture_only() {
        let h = Handler::parse(AARCH64_HANDLER).unwrap();
        assert!(h.enabled);
        assert_eq!(h.flags, "FC");
        assert!(h.catches(emulator("arm64").magic));
        assert!(!h.catches(emulator("amd64").magic));
        assert!(!h.catches(emulator("riscv64").magic));
        // A dynamic (ET_DYN) aarch64 binary is caught too.
        let mut pie = emulator("arm64").magic.to_vec();
        pie[16] = 3;
        assert!(h.catches(&pie));
        let disabled = Handler::parse(&AARCH64_HANDLER.replace("enabled\n", "disabled\n")).unwrap();
        assert!(!disabled.enabled);
        assert_eq!(Handler::parse("enabled\nextension .jar\n"), None);
    }

    #[test]
    fn the_registration_line_escapes_magic_and_mask_and_sets_f() {
        let line = registration(emulator("arm64"), Path::new("/usr/bin/qemu-aarch64-static"));
        assert!(line.starts_with(":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02"), "{line}");
        assert!(line.ends_with(":/usr/bin/qemu-aarch64-static:FC"), "{line}");
        assert_eq!(line.matches(':').count(), 7, "{line}");
    }

    #[test]
    fn every_emulator_catches_its_own_magic_only() {
        for e in EMULATORS {
            let text = format!(
                "enabled\nflags: F\noffset 0\nmagic {}\nmask {}\n",
                hex::encode(e.magic),
                hex::encode(e.mask)
            );
            let h = Handler::parse(&text).unwrap();
            for other in EMULATORS {
                assert_eq!(
                    h.catches(other.magic),
                    e.arch == other.arch,
                    "{} vs {}",
                    e.arch,
                    other.arch
                );
            }
        }
    }

    /// A stand-in for a mounted binfmt_misc: `register` is a plain file
    /// that receives what kiln writes.
    fn fake_binfmt(status: &str, handlers: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("register"), "").unwrap();
        fs::write(dir.path().join("status"), status).unwrap();
        for (name, text) in handlers {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn prepare_arm64(dir: &tempfile::TempDir, qemu_installed: bool) -> Result<String, String> {
        let find = |name: &str| qemu_installed.then(|| Path::new("/usr/bin").join(name));
        prepare(dir.path(), emulator("arm64"), find).map_err(|e| e.to_string())?;
        Ok(fs::read_to_string(dir.path().join("register")).unwrap())
    }

    #[test]
    fn a_missing_handler_is_registered_with_the_fix_binary_flag() {
        let dir = fake_binfmt(
            "enabled",
            &[("python3.11", "enabled\nflags: \noffset 0\nmagic a70d0d0a\n")],
        );
        let written = prepare_arm64(&dir, true).unwrap();
        assert_eq!(
            written,
            registration(emulator("arm64"), Path::new("/usr/bin/qemu-aarch64-static"))
        );
        let err = prepare_arm64(&fake_binfmt("enabled", &[]), false).unwrap_err();
        assert!(
            err.contains("qemu-aarch64-static is not on PATH (apt-get install qemu-user-static)"),
            "{err}"
        );
    }

    #[test]
    fn a_usable_handler_is_kept_and_an_unusable_one_explained() {
        let usable = fake_binfmt("enabled", &[("qemu-aarch64", AARCH64_HANDLER)]);
        assert_eq!(
            prepare_arm64(&usable, true).unwrap(),
            "",
            "nothing is registered over a usable handler"
        );

        let no_f = AARCH64_HANDLER.replace("flags: FC", "flags: OC");
        let err = prepare_arm64(&fake_binfmt("enabled", &[("qemu-aarch64", &no_f)]), true).unwrap_err();
        assert!(
            err.contains("qemu-aarch64 for linux/arm64 is registered without the F (fix binary) flag"),
            "{err}"
        );
        assert!(err.contains("echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64"), "{err}");

        let off = AARCH64_HANDLER.replace("enabled\n", "disabled\n");
        let err = prepare_arm64(&fake_binfmt("enabled", &[("aarch64", &off)]), true).unwrap_err();
        assert!(err.contains("handler aarch64 for linux/arm64 is disabled"), "{err}");

        let err = prepare_arm64(&fake_binfmt("disabled", &[]), true).unwrap_err();
        assert!(err.contains("binfmt_misc, which is disabled"), "{err}");
    }

    #[test]
    fn the_host_architecture_needs_no_emulation() {
        assert!(is_native(host_arch()));
        assert!(ensure(host_arch()).is_ok());
        let err = ensure("mips64").unwrap_err().to_string();
        assert!(err.contains("kiln emulates only"), "{err}");
    }
}
