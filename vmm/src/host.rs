//! Can this host boot this kernel under KVM? (`host_check`)
//!
//! Detects a missing or unopenable `/dev/kvm`, and PVM hosts. PVM
//! ("Pagetable-based Virtual Machine", the `kvm_pvm` module) provides /dev/kvm
//! without hardware virtualization (no vmx/svm CPU flag); it runs only guest
//! kernels built for PVM. An ordinary kernel does not fail cleanly there, so we
//! refuse it up front and name the fallback.
//!
//! **What counts as PVM-aware.** We look for "pvm" (case-insensitive) only in the
//! kernel's *version string*: the string a bzImage's setup header points to
//! (`kernel_version`, boot.rst) or an ELF vmlinux's `linux_banner`
//! ("Linux version ..."). That string is `UTS_RELEASE` plus build info, so it
//! contains "pvm" when the kernel was built with e.g. `CONFIG_LOCALVERSION="-pvm"`
//! or from a tree whose release name says so — build PVM guests that way. We
//! deliberately do not search the whole file: a bzImage is compressed, so its
//! bytes say nothing about its config, and a 3-byte pattern occurs by chance in
//! a few MiB of compressed data about as often as not.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKvm {
    /// KVM_GET_API_VERSION.
    pub api_version: i32,
    /// KVM's maximum vCPUs per VM.
    pub max_vcpus: usize,
    /// `/dev/kvm` is PVM.
    pub pvm: bool,
    /// The kernel's version string, if found.
    pub kernel_version: Option<String>,
    /// The kernel counts as PVM-aware (see the module docs).
    pub kernel_pvm_aware: bool,
}

/// Why KVM cannot be used for this kernel. Each message is one line naming the
/// reason and the fallback.
#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    /// No /dev/kvm.
    #[error("{path} does not exist (no KVM on this host: module not loaded or no virtualization support); use --runner qemu")]
    KvmMissing {
        /// Path checked.
        path: PathBuf,
    },
    /// /dev/kvm exists but cannot be opened.
    #[error("{path} cannot be opened: {reason}; give this user access (e.g. the kvm group) or use --runner qemu")]
    KvmNotOpenable {
        /// Path.
        path: PathBuf,
        /// errno text.
        reason: String,
    },
    /// The KVM API is unusable.
    #[error("{path} does not answer like KVM: {reason}; use --runner qemu")]
    KvmUnusable {
        /// Path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// PVM host, ordinary kernel.
    #[error("this host's KVM is PVM (/sys/module/kvm_pvm present, no vmx/svm in /proc/cpuinfo), which boots only PVM-aware kernels, and {kernel} is not one (its version string {} does not contain \"pvm\"); use --runner qemu", version.as_deref().map(|v| format!("{v:?}")).unwrap_or_else(|| "is unreadable".into()))]
    PvmKernelNotAware {
        /// Kernel path.
        kernel: PathBuf,
        /// Its version string.
        version: Option<String>,
    },
    /// The kernel cannot be read.
    #[error("cannot read kernel {kernel}: {reason}; check --kernel")]
    KernelUnreadable {
        /// Kernel path.
        kernel: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The file is no kernel we can boot (said before anything about PVM): the loader's
    /// own one-line reason, which names the file.
    #[error("{0}; pass a bzImage or an ELF vmlinux")]
    NotAKernel(String),
}

/// Where `host_check` looks (overridable for tests).
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// `/dev/kvm`.
    pub dev_kvm: PathBuf,
    /// `/sys/module/kvm_pvm`.
    pub kvm_pvm_module: PathBuf,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            dev_kvm: "/dev/kvm".into(),
            kvm_pvm_module: "/sys/module/kvm_pvm".into(),
            cpuinfo: "/proc/cpuinfo".into(),
        }
    }
}

/// `true` if `cpuinfo` text has a `flags` line with vmx or svm.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "vmx" || w == "svm"))
}

/// Is this host's KVM PVM? (`kvm_pvm` loaded and no hardware virtualization flag.)
pub fn is_pvm_host(paths: &HostPaths) -> bool {
    if !paths.kvm_pvm_module.exists() {
        return false;
    }
    let cpuinfo = std::fs::read_to_string(&paths.cpuinfo).unwrap_or_default();
    !cpuinfo_has_hw_virt(&cpuinfo)
}

/// The PVM-awareness rule (see the module docs).
pub fn version_is_pvm_aware(version: Option<&str>) -> bool {
    version.is_some_and(|v| v.to_ascii_lowercase().contains("pvm"))
}

/// Check that `/dev/kvm` is usable and, on a PVM host, that `kernel` is PVM-aware.
pub fn host_check(kernel: &Path) -> Result<HostKvm, HostCheckError> {
    host_check_with(&HostPaths::default(), kernel)
}

/// [`host_check`] with explicit paths.
pub fn host_check_with(paths: &HostPaths, kernel: &Path) -> Result<HostKvm, HostCheckError> {
    let path = paths.dev_kvm.clone();
    if let Err(e) = OpenOptions::new().read(true).write(true).open(&path) {
        return Err(if e.kind() == std::io::ErrorKind::NotFound {
            HostCheckError::KvmMissing { path }
        } else {
            HostCheckError::KvmNotOpenable {
                path,
                reason: e.to_string(),
            }
        });
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        HostCheckError::KvmUnusable {
            path: path.clone(),
            reason: "path contains NUL".into(),
        }
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| HostCheckError::KvmNotOpenable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let api_version = kvm.get_api_version();
    if api_version != 12 {
        return Err(HostCheckError::KvmUnusable {
            path,
            reason: format!("KVM_GET_API_VERSION returned {api_version}, expected 12"),
        });
    }
    // Not a kernel at all: say that first, not what its version string lacks.
    match crate::kernel::check_kernel(kernel) {
        Err(crate::kernel::KernelError::Io { source, .. }) => {
            return Err(HostCheckError::KernelUnreadable {
                kernel: kernel.to_path_buf(),
                reason: source.to_string(),
            })
        }
        Err(e) => return Err(HostCheckError::NotAKernel(e.to_string())),
        Ok(_) => {}
    }
    let version =
        crate::kernel::kernel_version(kernel).map_err(|e| HostCheckError::KernelUnreadable {
            kernel: kernel.to_path_buf(),
            reason: e.to_string(),
        })?;
    let aware = version_is_pvm_aware(version.as_deref());
    let pvm = is_pvm_host(paths);
    if pvm && !aware {
        return Err(HostCheckError::PvmKernelNotAware {
            kernel: kernel.to_path_buf(),
            version,
        });
    }
    Ok(HostKvm {
        api_version,
        max_vcpus: kvm.get_max_vcpus(),
        pvm,
        kernel_version: version,
        kernel_pvm_aware: aware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_hw_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(cpuinfo_has_hw_virt("flags\t: fpu svm\n"));
        assert!(!cpuinfo_has_hw_virt(
            "flags\t: fpu vmxx svm2\nmodel name: vmx\n"
        ));
    }

    #[test]
    fn pvm_detection() {
        let d = tempfile::tempdir().unwrap();
        let cpuinfo = d.path().join("cpuinfo");
        std::fs::write(&cpuinfo, "flags : fpu sse\n").unwrap();
        let mut p = HostPaths {
            dev_kvm: d.path().join("kvm"),
            kvm_pvm_module: d.path().join("kvm_pvm"),
            cpuinfo: cpuinfo.clone(),
        };
        assert!(!is_pvm_host(&p));
        std::fs::create_dir(&p.kvm_pvm_module).unwrap();
        assert!(is_pvm_host(&p));
        std::fs::write(&cpuinfo, "flags : fpu vmx\n").unwrap();
        assert!(!is_pvm_host(&p));
        p.cpuinfo = d.path().join("nope");
        assert!(is_pvm_host(&p));
    }

    #[test]
    fn awareness_rule() {
        assert!(version_is_pvm_aware(Some("6.7.0-rc6-PVM+ (u@h) #1")));
        assert!(!version_is_pvm_aware(Some(
            "6.12.38+deb13-amd64 (debian-kernel@lists.debian.org)"
        )));
        assert!(!version_is_pvm_aware(None));
    }

    #[test]
    fn missing_and_unopenable_kvm() {
        let d = tempfile::tempdir().unwrap();
        let p = HostPaths {
            dev_kvm: d.path().join("kvm"),
            kvm_pvm_module: d.path().join("kvm_pvm"),
            cpuinfo: d.path().join("cpuinfo"),
        };
        let e = host_check_with(&p, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, HostCheckError::KvmMissing { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("--runner qemu") && !msg.contains('\n'),
            "{msg}"
        );
        // A directory cannot be opened read-write.
        let p = HostPaths {
            dev_kvm: d.path().to_path_buf(),
            ..p
        };
        let e = host_check_with(&p, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, HostCheckError::KvmNotOpenable { .. }), "{e}");
        assert!(e.to_string().contains("--runner qemu"));
        // A regular file opens but is not KVM.
        let f = d.path().join("fake");
        std::fs::write(&f, "x").unwrap();
        let p = HostPaths { dev_kvm: f, ..p };
        let e = host_check_with(&p, Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("--runner qemu"), "{e}");
    }

    #[test]
    fn pvm_error_message_is_one_line() {
        let e = HostCheckError::PvmKernelNotAware {
            kernel: "/k/bzImage".into(),
            version: Some("6.12.0".into()),
        };
        let m = e.to_string();
        assert!(!m.contains('\n'));
        assert!(m.contains("PVM") && m.contains("--runner qemu") && m.contains("/k/bzImage"));
    }
}
