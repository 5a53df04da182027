//! `vsock-backend --vhost-user SOCK --uds PATH --guest-cid N`: serves one
//! QEMU `vhost-user-vsock-device` until the VM ends.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "virtio-vsock vhost-user backend (Firecracker hybrid-vsock Unix sockets)")]
struct Args {
    /// vhost-user socket QEMU connects to (-chardev socket,path=SOCK).
    #[arg(long = "vhost-user", value_name = "SOCK")]
    vhost_user: PathBuf,
    /// Host Unix socket: guest port P reaches a listener on PATH_P; host
    /// processes connect to PATH and write "CONNECT <port>\n".
    #[arg(long, value_name = "PATH")]
    uds: PathBuf,
    /// The guest's CID (3 or more).
    #[arg(long = "guest-cid", value_name = "N")]
    guest_cid: u64,
    /// Log connection-level events to stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    vsock::log_to_stderr(if args.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    });
    let cfg = vsock::vhost_user::BackendConfig::new(&args.vhost_user, &args.uds, args.guest_cid);
    let handle = vsock::vhost_user::spawn(&cfg).context("starting the vsock backend")?;
    eprintln!(
        "vsock-backend: waiting for a vhost-user front end on {} (guest CID {}, host sockets {}[_PORT])",
        args.vhost_user.display(),
        args.guest_cid,
        args.uds.display()
    );
    handle.join().context("serving vhost-user")?;
    Ok(())
}
