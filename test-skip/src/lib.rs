//! Skips that count. A test that cannot run on this machine calls [`skip`] with the
//! capability it lacks and why, then returns. The line goes to stderr as before; under
//! `cargo xtask test` (which sets [`DIR_VAR`]) it is also recorded, so the summary reports the
//! test as **skipped** (not passed) with its reason, and a skip for a capability the machine
//! has fails the run (`xtask::test`).
//!
//! A dev-dependency of the crates whose tests skip; no library code uses it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where skip records go (set by `cargo xtask test`).
pub const DIR_VAR: &str = "TESTBED_SKIP_DIR";

/// `/dev/kvm` can be opened (any KVM, PVM included).
pub const KVM: &str = "kvm";
/// Hardware KVM (vmx/svm; not PVM): real kernels boot under our VMM directly.
pub const HW_KVM: &str = "hw-kvm";
/// Root and `/dev/net/tun` (taps).
pub const ROOT_TUN: &str = "root-tun";
/// The host kernel has `/dev/vhost-net`.
pub const HOST_VHOST_NET: &str = "host-vhost-net";
/// The host kernel has no `/dev/vhost-net` (tests of the refusal path).
pub const NO_HOST_VHOST_NET: &str = "no-host-vhost-net";
/// The host kernel has kcov (`/sys/kernel/debug/kcov`).
pub const HOST_KCOV: &str = "host-kcov";
/// `setpriv` (util-linux) to drop capabilities.
pub const SETPRIV: &str = "setpriv";
/// The guest kernel, agent and report tools `cargo xtask test` builds and installs.
pub const ARTIFACTS: &str = "artifacts";
/// Asked for explicitly (e.g. benchmarks behind an environment variable): never required.
pub const OPT_IN: &str = "opt-in";

/// Every capability a skip may name.
pub const ALL: &[&str] = &[
    KVM,
    HW_KVM,
    ROOT_TUN,
    HOST_VHOST_NET,
    NO_HOST_VHOST_NET,
    HOST_KCOV,
    SETPRIV,
    ARTIFACTS,
    OPT_IN,
];

/// One record: `test \t capability \t reason` (tabs and newlines in the text become spaces).
pub fn record_line(test: &str, capability: &str, reason: &str) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}\n",
        clean(test),
        clean(capability),
        clean(reason)
    )
}

/// Parses a record line back into (test, capability, reason).
pub fn parse_record(line: &str) -> Option<(&str, &str, &str)> {
    let mut p = line.trim_end_matches('\n').splitn(3, '\t');
    Some((p.next()?, p.next()?, p.next()?))
}

/// `test` cannot run here: it needs `capability` (one of [`ALL`]), missing because `reason`.
/// Prints `SKIP: test: reason` and records it where `cargo xtask test` collects skips. The
/// caller returns right after (or skips that part).
pub fn skip(test: &str, capability: &str, reason: impl std::fmt::Display) {
    let reason = reason.to_string();
    eprintln!("SKIP: {test}: {reason}");
    let Some(dir) = std::env::var_os(DIR_VAR).filter(|d| !d.is_empty()) else {
        return;
    };
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{}-{}.skip",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let path = PathBuf::from(dir).join(name);
    // A skip that cannot be recorded must not pass silently.
    let mut f = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("recording the skip of {test} in {}: {e}", path.display()));
    f.write_all(record_line(test, capability, &reason).as_bytes())
        .unwrap_or_else(|e| panic!("recording the skip of {test}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_stay_one_line() {
        let l = record_line("a_test", HW_KVM, "no\tvmx\nhere");
        assert_eq!(l.matches('\n').count(), 1);
        assert_eq!(parse_record(&l), Some(("a_test", HW_KVM, "no vmx here")));
        assert_eq!(parse_record("broken"), None);
    }
}
