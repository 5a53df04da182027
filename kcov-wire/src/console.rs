//! The agent's serial-console protocol, read by every runner before any
//! vsock stream exists: one line when the agent starts, one as its last line.

/// `READY_MARKER <kernel release>`: the agent runs as /init.
pub const READY_MARKER: &str = "@@TESTBED-READY@@";
/// `EXIT_MARKER <status>`: the agent's final status; the VM ends right after.
pub const EXIT_MARKER: &str = "@@TESTBED-EXIT@@";
/// Host → agent: the user command's argv, NUL-separated, in the initramfs.
pub const CMD_FILE: &str = "/etc/testbed/cmd";
