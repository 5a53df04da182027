//! The nested runner's contract between the host (`cargo xtask boot --runner nested`) and the
//! L1 init (`guest-agent`'s `nested-l1-init` binary), which runs our `vmm` inside a QEMU TCG
//! guest ("L1") that has KVM, to boot the testbed guest ("L2").
//!
//! # L1 initramfs
//! The host packs the L1 init as `/init` and the files below; [`VMM_ARGV_FILE`] holds the
//! vmm's argv (without the program, NUL-separated like [`crate::console::CMD_FILE`]:
//! [`crate::console::render_argv`]), [`RELAY_FILE`] the vsock ports to relay
//! ([`render_ports`]/[`parse_ports`]).
//!
//! # L1 console
//! One serial console carries both levels. Every line of the L2 console (the vmm's stdout)
//! is written as [`L2_PREFIX`] + line; every other line (L1 kernel, L1 init) belongs to L1.
//! The L1 init prints [`L1_READY_MARKER`] `<release>` once it runs and [`L1_EXIT_MARKER`]
//! `<vmm status>` after the vmm ended and every relay finished; a check that fails before
//! the vmm starts prints [`L1_ERROR_PREFIX`] + reason, then the exit marker.
//!
//! # Streams
//! A guest connect from L2 to CID 2 port P reaches the vmm's hybrid vsock listener path
//! [`L1_VSOCK_UDS`]`_P` inside L1; the L1 init accepts there and connects AF_VSOCK to CID 2
//! port P of the real host, copying bytes both ways unchanged. So the host sees the agent's
//! stream exactly as a kvm run would deliver it.

/// Directory of the nested files in the L1 initramfs.
pub const DIR: &str = "/nested";
/// The static `vmm` binary.
pub const VMM_FILE: &str = "/nested/vmm";
/// The L2 kernel.
pub const L2_KERNEL_FILE: &str = "/nested/bzImage";
/// The L2 initramfs (the agent's).
pub const L2_INITRAMFS_FILE: &str = "/nested/initramfs.cpio";
/// The vmm's arguments, NUL-separated.
pub const VMM_ARGV_FILE: &str = "/nested/vmm.argv";
/// The vsock ports to relay from L2 to the host, one decimal number per line.
pub const RELAY_FILE: &str = "/nested/relay-ports";
/// The hybrid vsock socket path the vmm gets in L1 (`--vsock-uds`).
pub const L1_VSOCK_UDS: &str = "/tmp/l2-vsock.sock";
/// Where the vmm writes the L1 host kernel's kcov PCs (`--host-kcov`), if asked.
pub const HOST_KCOV_FILE: &str = "/tmp/host-kcov.pcs";
/// The AF_VSOCK port (to the host, CID 2) on which the L1 init sends [`HOST_KCOV_FILE`] after
/// the vmm ended.
pub const HOST_KCOV_PORT: u32 = 10_099;

/// With `--net`: the tap's name in L1 (one line); the L1 init gives it [`L1_TAP_ADDR`]/24
/// once the vmm has created it, and serves TCP echo on [`L1_TCP_ECHO_PORT`].
pub const NET_FILE: &str = "/nested/net";
/// L1's address on the L2's tap (the L2 takes another one of 10.0.2.0/24, e.g. 10.0.2.15).
pub const L1_TAP_ADDR: [u8; 4] = [10, 0, 2, 1];
/// Prefix length of the tap's network.
pub const L1_TAP_PREFIX: u8 = 24;
/// TCP echo service of L1 on the tap (every byte sent comes back).
pub const L1_TCP_ECHO_PORT: u16 = 7000;
/// vsock echo service of L1 for the L2: a connect from L2 to CID 2 on this port is echoed by
/// the L1 init (not relayed to the host).
pub const L1_VSOCK_ECHO_PORT: u32 = 7001;

/// Prefix of an L2 console line on the L1 console.
pub const L2_PREFIX: &str = "L2| ";
/// `L1_READY_MARKER <release>`: the L1 init runs.
pub const L1_READY_MARKER: &str = "@@TESTBED-L1-READY@@";
/// `L1_EXIT_MARKER <status>`: the vmm's exit status (or the L1 init's own failure status);
/// L1 resets right after.
pub const L1_EXIT_MARKER: &str = "@@TESTBED-L1-EXIT@@";
/// Prefix of the line saying why L1 could not run the vmm.
pub const L1_ERROR_PREFIX: &str = "testbed-l1: error: ";
/// The L1 exit status when the L1 init could not start the vmm (its checks failed).
pub const L1_SETUP_FAILED: i32 = 90;

/// Renders the relay port list.
pub fn render_ports(ports: &[u32]) -> String {
    ports.iter().map(|p| format!("{p}\n")).collect()
}

/// Parses the relay port list; a bad line is an error naming it.
pub fn parse_ports(text: &str) -> Result<Vec<u32>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>()
                .map_err(|_| format!("{RELAY_FILE}: not a port: {l:?}"))
        })
        .collect()
}

/// How one line of the L1 console is to be read.
#[derive(Debug, PartialEq, Eq)]
pub enum L1Line<'a> {
    /// A line of the L2 console.
    L2(&'a str),
    /// A line of L1 (kernel or init).
    L1(&'a str),
}

/// Splits an L1 console line into its level. The prefix may follow noise (an L1 kernel
/// message that did not end its line), which then stays an L1 line of its own.
pub fn classify(line: &str) -> L1Line<'_> {
    match line.strip_prefix(L2_PREFIX) {
        Some(rest) => L1Line::L2(rest),
        None => L1Line::L1(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_and_bad_lines_are_named() {
        let p = vec![10_000, 10_099];
        assert_eq!(parse_ports(&render_ports(&p)).unwrap(), p);
        assert_eq!(parse_ports("").unwrap(), Vec::<u32>::new());
        let e = parse_ports("10000\nx1\n").unwrap_err();
        assert!(e.contains("\"x1\""), "{e}");
        assert!(parse_ports("99999999999").is_err());
    }

    #[test]
    fn lines_split_by_level() {
        assert_eq!(
            classify("L2| @@TESTBED-READY@@ 6.12"),
            L1Line::L2("@@TESTBED-READY@@ 6.12")
        );
        assert_eq!(classify("L2| "), L1Line::L2(""));
        assert_eq!(
            classify("[ 1.0] kvm_amd: ok"),
            L1Line::L1("[ 1.0] kvm_amd: ok")
        );
        assert_eq!(classify("xL2| y"), L1Line::L1("xL2| y"));
    }
}
