//! The run plan, read from the kernel command line (`/proc/cmdline`).
//!
//! Words that start with `testbed.` belong to the agent; every other word is the kernel's.
//!
//! | word | meaning | default |
//! |---|---|---|
//! | `testbed.workloads=a,b` | workloads in order ([`Workload`]) | `cmd` if a command was given, else none |
//! | `testbed.cover=pc\|cmp\|off` | kcov remote trace mode; `off` = no remote enable (negative control) | `pc` |
//! | `testbed.local=on\|off` | also collect the local coverage of the thread that drives a vhost device (its own ioctls, kicks, reads and writes of the device fd), in the same mode, in an area 4 times `testbed.area` | `on` |
//! | `testbed.area=<words>` | kcov area size in u64 words, whole pages (multiple of 512) | 1048576 |
//! | `testbed.transport=console\|vsock` | where the kcov-wire stream goes | `console` |
//! | `testbed.port=<P>` | AF_VSOCK port on CID 2 (vsock transport) | 10000 |
//! | `testbed.frames=<N>` | frames (net) / messages (vsock) per workload | 64 |
//! | `testbed.size=<B>` | frame size in bytes (net: Ethernet frame 60..=1514) / message size (vsock) | 256 |
//! | `testbed.queue=<N>` | virtqueue size (power of two, 8..=1024) | 256 |
//! | `testbed.indirect=on\|off` | negotiate and use VIRTIO_RING_F_INDIRECT_DESC | `off` |
//! | `testbed.event_idx=on\|off` | negotiate VIRTIO_RING_F_EVENT_IDX | `on` |
//! | `testbed.mrg_rxbuf=on\|off` | negotiate VIRTIO_NET_F_MRG_RXBUF | `on` |
//! | `testbed.vsock_cid=<CID>` | guest CID given to the vhost-vsock device (not the CID of our own virtio-vsock) | 100 |
//! | `testbed.settle_ms=<ms>` | wait before draining the kcov area | 50 |
//! | `testbed.snapshot_ms=<ms>` | while a workload runs, ship the coverage its area gained every this many ms, so a hang or a panic keeps the coverage up to it; `0` = only after the workload | 1000 |
//! | `testbed.timeout_ms=<ms>` | per-step timeout inside a workload | 30000 (generous: TCG guests on a loaded host are slow) |
//! | `testbed.fuzz=vhost-net\|vhost-vsock` | run a coverage-guided fuzz campaign on this device instead of workloads (`guest-agent/src/fuzz.rs`) | none |
//! | `testbed.fuzz_time=<s>` | seconds the campaign mutates; `0` = only run the corpus the host included (a reproducer) | 60 |
//! | `testbed.fuzz_seed=<n>` | seed of the campaign's mutations | 1 |
//! | `testbed.fuzz_provoke=0\|1` | let the programs' `Provoke` ops ask lkdtm for a kernel bug (`cargo xtask fuzz --self-test`, `--provoke`); otherwise the agent skips them | 0 |
//!
//! Anything else under `testbed.` is an error, as is a bad value: the agent reports it in an
//! Error frame and exits non-zero.

use std::fmt;

use crate::program::Target;
use crate::KcovMode;

/// Default kcov area size in words (8 MiB).
pub const DEFAULT_AREA_WORDS: usize = 1 << 20;
/// Default AF_VSOCK port of the host collector.
pub const DEFAULT_PORT: u32 = 10_000;
/// Default period of the coverage snapshots of a running workload, in milliseconds.
pub const DEFAULT_SNAPSHOT_MS: u32 = 1000;
/// Shortest snapshot period accepted (shorter ones would mostly cost the workload time).
pub const MIN_SNAPSHOT_MS: u32 = 10;
/// Longest snapshot period accepted.
pub const MAX_SNAPSHOT_MS: u32 = 600_000;

/// A workload the agent can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Frames through vhost-net TX into a tap, read back over AF_PACKET.
    VhostNetTx,
    /// Frames injected into a tap over AF_PACKET, received through vhost-net RX.
    VhostNetRx,
    /// The agent as vhost-vsock frontend, a guest AF_VSOCK client talking to it.
    VhostVsock,
    /// vhost-net refusing malformed ioctls and rings with the exact errno / reaction.
    VhostNetErrors,
    /// The vhost-net feature matrix: TX and RX frames through one device per variant.
    VhostNetMatrix,
    /// vhost-net's control plane under traffic: dirty log, detach/attach, ring bases,
    /// RESET_OWNER, IOTLB messages.
    VhostNetControl,
    /// vhost-vsock's ioctls, transport paths (cancel, RST, SEQPACKET) and ring errors.
    VhostVsockControl,
    /// vhost-net TX zero-copy (its boot gets `vhost_net.experimental_zcopytx=1`).
    VhostNetZcopy,
    /// vhost-scsi's extra workers: VHOST_NEW_WORKER, VHOST_FREE_WORKER,
    /// VHOST_ATTACH_VRING_WORKER, VHOST_GET_VRING_WORKER, kicks on new workers.
    VhostScsiWorkers,
    /// vhost-vsock flow control: queue full, credit both ways, a packet past the credit.
    VhostVsockCredit,
    /// vhost-vsock with many connections: reply backpressure, 64 streams, backlog, half-closes,
    /// a CID change under connections.
    VhostVsockConns,
    /// vhost-net's smaller paths: an AF_PACKET socket as backend, RX buffers running out
    /// mid-frame, blocking reads of the device fd, IOTLB-mapped rings in pieces.
    VhostNetGaps,
    /// vhost-scsi's control queue (TMF, AN), hotplug events, malformed I/O requests, T10 PI.
    VhostScsiControl,
    /// The user command (`/etc/testbed/cmd`) under the remote handle.
    Cmd,
}

impl Workload {
    /// All workloads.
    pub const ALL: [Workload; 14] = [
        Workload::VhostNetTx,
        Workload::VhostNetRx,
        Workload::VhostVsock,
        Workload::VhostNetMatrix,
        Workload::VhostNetControl,
        Workload::VhostNetErrors,
        Workload::VhostVsockControl,
        Workload::VhostNetZcopy,
        Workload::VhostScsiWorkers,
        Workload::VhostVsockCredit,
        Workload::VhostVsockConns,
        Workload::VhostNetGaps,
        Workload::VhostScsiControl,
        Workload::Cmd,
    ];

    /// The name used on the command line and in the stream.
    pub fn name(self) -> &'static str {
        match self {
            Workload::VhostNetTx => "vhost-net-tx",
            Workload::VhostNetRx => "vhost-net-rx",
            Workload::VhostVsock => "vhost-vsock",
            Workload::VhostNetErrors => "vhost-net-errors",
            Workload::VhostNetMatrix => "vhost-net-matrix",
            Workload::VhostNetControl => "vhost-net-control",
            Workload::VhostVsockControl => "vhost-vsock-control",
            Workload::VhostNetZcopy => "vhost-net-zcopy",
            Workload::VhostScsiWorkers => "vhost-scsi-workers",
            Workload::VhostVsockCredit => "vhost-vsock-credit",
            Workload::VhostVsockConns => "vhost-vsock-conns",
            Workload::VhostNetGaps => "vhost-net-gaps",
            Workload::VhostScsiControl => "vhost-scsi-control",
            Workload::Cmd => "cmd",
        }
    }

    /// Kernel command-line parameters the workload needs (module parameters of built-in
    /// drivers that are read-only at run time).
    pub fn kernel_params(self) -> &'static [&'static str] {
        match self {
            Workload::VhostNetZcopy => &["vhost_net.experimental_zcopytx=1"],
            _ => &[],
        }
    }

    /// The workload called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Coverage setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// Remote coverage in this mode.
    On(KcovMode),
    /// No remote enable (negative control).
    Off,
}

impl Cover {
    /// Its `testbed.cover` word: `pc`, `cmp`, `off`.
    pub fn name(self) -> &'static str {
        match self {
            Cover::On(KcovMode::Pc) => "pc",
            Cover::On(KcovMode::Cmp) => "cmp",
            Cover::Off => "off",
        }
    }
}

/// Where the stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Marker lines on the serial console.
    Console,
    /// AF_VSOCK stream to CID 2.
    Vsock,
}

impl Transport {
    /// Its `testbed.transport` word.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Console => "console",
            Transport::Vsock => "vsock",
        }
    }
}

/// Parameters of the vhost workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Frames / messages per workload.
    pub frames: u32,
    /// Frame / message size in bytes.
    pub size: u32,
    /// Virtqueue size.
    pub queue: u16,
    /// Use indirect descriptors.
    pub indirect: bool,
    /// Negotiate EVENT_IDX.
    pub event_idx: bool,
    /// Negotiate MRG_RXBUF (vhost-net).
    pub mrg_rxbuf: bool,
    /// vhost-vsock guest CID.
    pub vsock_cid: u32,
    /// Per-step timeout in milliseconds.
    pub timeout_ms: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            frames: 64,
            size: 256,
            queue: 256,
            indirect: false,
            event_idx: true,
            mrg_rxbuf: true,
            vsock_cid: 100,
            timeout_ms: 30_000,
        }
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Workloads in order.
    pub workloads: Vec<Workload>,
    /// Coverage setting.
    pub cover: Cover,
    /// Also collect the local coverage of the thread that drives a vhost device.
    pub local: bool,
    /// kcov area size in words.
    pub area_words: usize,
    /// Stream transport.
    pub transport: Transport,
    /// vsock port.
    pub port: u32,
    /// Settle time before draining, in milliseconds.
    pub settle_ms: u32,
    /// Period of the coverage snapshots of a running workload in milliseconds; 0 = none.
    pub snapshot_ms: u32,
    /// Workload parameters.
    pub params: Params,
    /// A fuzz campaign instead of workloads (`testbed.fuzz*`).
    pub fuzz: Option<FuzzPlan>,
}

/// A fuzz campaign: the device, how long, the seed of its mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzPlan {
    /// The device fuzzed.
    pub target: Target,
    /// Seconds the campaign mutates (0: only the included corpus runs).
    pub time_s: u32,
    /// Mutation seed.
    pub seed: u64,
    /// `Provoke` ops run (`testbed.fuzz_provoke=1`); otherwise they are skipped.
    pub provoke: bool,
}

/// Default length of a fuzz campaign in the guest, in seconds.
pub const DEFAULT_FUZZ_TIME_S: u32 = 60;

impl Default for Plan {
    /// No workloads, PC coverage, the default area, console transport, default parameters.
    fn default() -> Self {
        Plan {
            workloads: Vec::new(),
            cover: Cover::On(KcovMode::Pc),
            local: true,
            area_words: DEFAULT_AREA_WORDS,
            transport: Transport::Console,
            port: DEFAULT_PORT,
            settle_ms: 50,
            snapshot_ms: DEFAULT_SNAPSHOT_MS,
            params: Params::default(),
            fuzz: None,
        }
    }
}

/// A plan that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `testbed.workloads` names a workload that does not exist.
    #[error("unknown workload {name:?} (known: {})", known_workloads())]
    UnknownWorkload {
        /// The name given.
        name: String,
    },
    /// An unknown `testbed.` key.
    #[error("unknown plan key testbed.{key} (see kcov-wire/src/plan.rs for the keys)")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A `testbed.` word without `=`.
    #[error("malformed plan word {word:?}: expected testbed.KEY=VALUE")]
    Malformed {
        /// The word.
        word: String,
    },
    /// A value out of range or of the wrong form.
    #[error("bad value {value:?} for testbed.{key}: {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// The same key twice.
    #[error("testbed.{key} given twice")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// `cmd` in the plan but no command in the initramfs.
    #[error("workload cmd needs a command (cargo xtask boot ... -- CMD ARGS)")]
    NoCommand,
}

fn known_workloads() -> String {
    let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
    names.join(", ")
}

fn bad(key: &str, value: &str, expected: &'static str) -> PlanError {
    PlanError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

fn num<T: std::str::FromStr + PartialOrd + Copy>(
    key: &str,
    value: &str,
    range: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<T, PlanError> {
    let v: T = value.parse().map_err(|_| bad(key, value, expected))?;
    if !range.contains(&v) {
        return Err(bad(key, value, expected));
    }
    Ok(v)
}

fn on_off(key: &str, value: &str) -> Result<bool, PlanError> {
    match value {
        "on" | "1" | "yes" => Ok(true),
        "off" | "0" | "no" => Ok(false),
        _ => Err(bad(key, value, "on or off")),
    }
}

impl Plan {
    /// Parses the kernel command line. `has_command`: a user command is in the initramfs.
    pub fn parse(cmdline: &str, has_command: bool) -> Result<Plan, PlanError> {
        let mut plan = Plan::default();
        let mut workloads_given = false;
        let mut seen: Vec<String> = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some(kv) = word.strip_prefix("testbed.") else {
                continue;
            };
            let Some((key, value)) = kv.split_once('=') else {
                return Err(PlanError::Malformed {
                    word: word.to_string(),
                });
            };
            if seen.iter().any(|k| k == key) {
                return Err(PlanError::Duplicate {
                    key: key.to_string(),
                });
            }
            seen.push(key.to_string());
            if key == "workloads" {
                workloads_given = true;
            }
            plan.set(key, value)?;
        }
        if !workloads_given && has_command {
            plan.workloads.push(Workload::Cmd);
        }
        if plan.workloads.contains(&Workload::Cmd) && !has_command {
            return Err(PlanError::NoCommand);
        }
        Ok(plan)
    }

    /// Sets `testbed.KEY` to `value`, checked as [`parse`](Self::parse) checks it (the host
    /// builds its plan with this, so a bad `--param` fails before anything is built).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PlanError> {
        let p = &mut self.params;
        match key {
            "workloads" => {
                let mut workloads = Vec::new();
                for name in value.split(',') {
                    if name.is_empty() {
                        return Err(bad(key, value, "comma-separated workload names"));
                    }
                    let w = Workload::from_name(name).ok_or(PlanError::UnknownWorkload {
                        name: name.to_string(),
                    })?;
                    workloads.push(w);
                }
                self.workloads = workloads;
            }
            "cover" => {
                self.cover = match value {
                    "pc" => Cover::On(KcovMode::Pc),
                    "cmp" => Cover::On(KcovMode::Cmp),
                    "off" => Cover::Off,
                    _ => return Err(bad(key, value, "pc, cmp or off")),
                }
            }
            "local" => self.local = on_off(key, value)?,
            "area" => {
                const AREA: &str = "kcov area words, a multiple of 512 (one page) up to 67108864";
                let words: usize = num(key, value, 512..=(1 << 26), AREA)?;
                if !words.is_multiple_of(512) {
                    return Err(bad(key, value, AREA));
                }
                self.area_words = words;
            }
            "transport" => {
                self.transport = match value {
                    "console" => Transport::Console,
                    "vsock" => Transport::Vsock,
                    _ => return Err(bad(key, value, "console or vsock")),
                }
            }
            "port" => self.port = num(key, value, 1..=u32::MAX - 1, "a vsock port")?,
            "settle_ms" => self.settle_ms = num(key, value, 0..=60_000, "milliseconds, 0..=60000")?,
            "snapshot_ms" => {
                const PERIOD: &str = "milliseconds, 0 (off) or 10..=600000";
                let ms: u32 = num(key, value, 0..=MAX_SNAPSHOT_MS, PERIOD)?;
                if ms != 0 && ms < MIN_SNAPSHOT_MS {
                    return Err(bad(key, value, PERIOD));
                }
                self.snapshot_ms = ms;
            }
            "frames" => p.frames = num(key, value, 1..=1_000_000, "1..=1000000")?,
            "size" => p.size = num(key, value, 1..=65_536, "bytes, 1..=65536")?,
            "queue" => {
                let q: u16 = num(key, value, 8..=1024, "a power of two, 8..=1024")?;
                if !q.is_power_of_two() {
                    return Err(bad(key, value, "a power of two, 8..=1024"));
                }
                p.queue = q;
            }
            "indirect" => p.indirect = on_off(key, value)?,
            "event_idx" => p.event_idx = on_off(key, value)?,
            "mrg_rxbuf" => p.mrg_rxbuf = on_off(key, value)?,
            "vsock_cid" => {
                p.vsock_cid = num(key, value, 3..=u32::MAX - 1, "a guest CID, 3..=2^32-2")?
            }
            "timeout_ms" => p.timeout_ms = num(key, value, 10..=600_000, "10..=600000")?,
            "fuzz" | "fuzz_time" | "fuzz_seed" | "fuzz_provoke" => self.set_fuzz(key, value)?,
            _ => {
                return Err(PlanError::UnknownKey {
                    key: key.to_string(),
                })
            }
        }
        Ok(())
    }

    /// The `testbed.*` words of this plan: each setting that differs from the default, in a
    /// fixed order. [`parse`](Self::parse) of them gives the plan back.
    pub fn words(&self) -> Vec<String> {
        let d = Plan::default();
        let mut w = Vec::new();
        let mut word = |k: &str, v: String| w.push(format!("testbed.{k}={v}"));
        if !self.workloads.is_empty() {
            let names: Vec<&str> = self.workloads.iter().map(|w| w.name()).collect();
            word("workloads", names.join(","));
        }
        if self.cover != d.cover {
            word("cover", self.cover.name().into());
        }
        if self.local != d.local {
            word("local", if self.local { "on" } else { "off" }.into());
        }
        if self.area_words != d.area_words {
            word("area", self.area_words.to_string());
        }
        if self.transport != d.transport {
            word("transport", self.transport.name().into());
        }
        if self.port != d.port {
            word("port", self.port.to_string());
        }
        if self.settle_ms != d.settle_ms {
            word("settle_ms", self.settle_ms.to_string());
        }
        if self.snapshot_ms != d.snapshot_ms {
            word("snapshot_ms", self.snapshot_ms.to_string());
        }
        let (p, dp) = (&self.params, &d.params);
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        if p.frames != dp.frames {
            word("frames", p.frames.to_string());
        }
        if p.size != dp.size {
            word("size", p.size.to_string());
        }
        if p.queue != dp.queue {
            word("queue", p.queue.to_string());
        }
        if p.indirect != dp.indirect {
            word("indirect", on(p.indirect));
        }
        if p.event_idx != dp.event_idx {
            word("event_idx", on(p.event_idx));
        }
        if p.mrg_rxbuf != dp.mrg_rxbuf {
            word("mrg_rxbuf", on(p.mrg_rxbuf));
        }
        if p.vsock_cid != dp.vsock_cid {
            word("vsock_cid", p.vsock_cid.to_string());
        }
        if p.timeout_ms != dp.timeout_ms {
            word("timeout_ms", p.timeout_ms.to_string());
        }
        if let Some(f) = &self.fuzz {
            word("fuzz", f.target.name().into());
            if f.time_s != DEFAULT_FUZZ_TIME_S {
                word("fuzz_time", f.time_s.to_string());
            }
            if f.seed != 1 {
                word("fuzz_seed", f.seed.to_string());
            }
            if f.provoke {
                word("fuzz_provoke", "1".into());
            }
        }
        w
    }

    /// The kernel parameters the plan's workloads need ([`Workload::kernel_params`]), each
    /// once; they go on the command line beside [`words`](Self::words) (they change the
    /// kernel for every workload of the boot).
    pub fn kernel_words(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for w in &self.workloads {
            for p in w.kernel_params() {
                if !out.iter().any(|o| o == p) {
                    out.push(p.to_string());
                }
            }
        }
        out
    }

    /// `testbed.fuzz`, `fuzz_time`, `fuzz_seed`, `fuzz_provoke` (the latter in any order with
    /// the first).
    fn set_fuzz(&mut self, key: &str, value: &str) -> Result<(), PlanError> {
        let f = self.fuzz.get_or_insert(FuzzPlan {
            target: Target::VhostNet,
            time_s: DEFAULT_FUZZ_TIME_S,
            seed: 1,
            provoke: false,
        });
        match key {
            "fuzz" => {
                f.target = Target::from_name(value)
                    .ok_or_else(|| bad(key, value, "vhost-net or vhost-vsock"))?
            }
            "fuzz_time" => f.time_s = num(key, value, 0..=86_400, "seconds, 0..=86400")?,
            "fuzz_provoke" => f.provoke = num(key, value, 0..=1, "0 or 1")? == 1,
            _ => f.seed = num(key, value, 0..=u64::MAX, "a number")?,
        }
        Ok(())
    }

    /// Frame size for the net workloads, checked against Ethernet limits.
    pub fn net_frame_size(&self) -> Result<usize, PlanError> {
        let s = self.params.size;
        if !(60..=1514).contains(&s) {
            return Err(bad(
                "size",
                &s.to_string(),
                "60..=1514 bytes for the vhost-net workloads (an Ethernet frame)",
            ));
        }
        Ok(s as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_command() {
        let p = Plan::parse("console=ttyS0 quiet", false).unwrap();
        assert!(p.workloads.is_empty());
        assert_eq!(p.cover, Cover::On(KcovMode::Pc));
        assert!(p.local);
        assert_eq!(p.area_words, DEFAULT_AREA_WORDS);
        assert_eq!(p.transport, Transport::Console);
        assert_eq!(p.snapshot_ms, DEFAULT_SNAPSHOT_MS);
        let p = Plan::parse("console=ttyS0", true).unwrap();
        assert_eq!(p.workloads, [Workload::Cmd]);
    }

    #[test]
    fn full_plan() {
        let p = Plan::parse(
            "x testbed.workloads=vhost-net-tx,vhost-vsock,vhost-net-rx testbed.cover=cmp \
             testbed.area=1024 testbed.transport=vsock testbed.port=1234 testbed.frames=9 \
             testbed.size=1514 testbed.queue=64 testbed.indirect=on testbed.event_idx=off \
             testbed.mrg_rxbuf=off testbed.vsock_cid=42 testbed.settle_ms=0 testbed.timeout_ms=100 \
             testbed.snapshot_ms=250",
            false,
        )
        .unwrap();
        assert_eq!(
            p.workloads,
            [
                Workload::VhostNetTx,
                Workload::VhostVsock,
                Workload::VhostNetRx
            ]
        );
        assert_eq!(p.cover, Cover::On(KcovMode::Cmp));
        assert_eq!(p.area_words, 1024);
        assert_eq!(p.transport, Transport::Vsock);
        assert_eq!(p.port, 1234);
        assert_eq!(p.settle_ms, 0);
        assert_eq!(p.snapshot_ms, 250);
        assert_eq!(
            p.params,
            Params {
                frames: 9,
                size: 1514,
                queue: 64,
                indirect: true,
                event_idx: false,
                mrg_rxbuf: false,
                vsock_cid: 42,
                timeout_ms: 100
            }
        );
        assert_eq!(p.net_frame_size(), Ok(1514));
        let p = Plan::parse("testbed.cover=off testbed.workloads=cmd", true).unwrap();
        assert_eq!(p.cover, Cover::Off);
        for (word, ms) in [("0", 0), ("10", 10), ("600000", 600_000)] {
            let p = Plan::parse(&format!("testbed.snapshot_ms={word}"), false).unwrap();
            assert_eq!(p.snapshot_ms, ms, "{word}");
        }
    }

    #[test]
    fn bad_plans() {
        let e = |s: &str| Plan::parse(s, false).unwrap_err();
        assert_eq!(
            e("testbed.workloads=vhost-net-tx,nope"),
            PlanError::UnknownWorkload {
                name: "nope".into()
            }
        );
        assert!(matches!(
            e("testbed.workloads="),
            PlanError::BadValue { .. }
        ));
        assert!(matches!(
            e("testbed.workloads=vhost-net-tx,,cmd"),
            PlanError::BadValue { .. }
        ));
        assert!(matches!(e("testbed.frobs=1"), PlanError::UnknownKey { .. }));
        assert!(matches!(e("testbed.cover"), PlanError::Malformed { .. }));
        assert!(matches!(e("testbed.cover=xyz"), PlanError::BadValue { .. }));
        assert!(matches!(e("testbed.area=1"), PlanError::BadValue { .. }));
        assert!(matches!(e("testbed.area=64"), PlanError::BadValue { .. }));
        assert!(matches!(e("testbed.area=1000"), PlanError::BadValue { .. }));
        assert!(matches!(e("testbed.area=-5"), PlanError::BadValue { .. }));
        assert!(matches!(e("testbed.queue=100"), PlanError::BadValue { .. }));
        assert!(matches!(
            e("testbed.queue=2048"),
            PlanError::BadValue { .. }
        ));
        assert!(matches!(e("testbed.frames=0"), PlanError::BadValue { .. }));
        for v in ["1", "9", "600001", "-1", "1s", ""] {
            let err = e(&format!("testbed.snapshot_ms={v}"));
            assert!(matches!(err, PlanError::BadValue { .. }), "{v}: {err:?}");
            assert!(err.to_string().contains("0 (off) or 10..=600000"), "{err}");
        }
        assert!(matches!(
            e("testbed.vsock_cid=2"),
            PlanError::BadValue { .. }
        ));
        assert!(matches!(
            e("testbed.size=1 testbed.size=2"),
            PlanError::Duplicate { .. }
        ));
        assert_eq!(e("testbed.workloads=cmd"), PlanError::NoCommand);
        let p = Plan::parse("testbed.size=59", false).unwrap();
        assert!(p.net_frame_size().is_err());
        assert!(e("testbed.workloads=bogus")
            .to_string()
            .contains("unknown workload \"bogus\""));
    }

    #[test]
    fn workloads_bring_their_kernel_params() {
        let mut p = Plan::default();
        assert!(p.kernel_words().is_empty());
        p.set("workloads", "vhost-net-tx,vhost-net-zcopy,vhost-net-zcopy")
            .unwrap();
        assert_eq!(p.kernel_words(), ["vhost_net.experimental_zcopytx=1"]);
        // Not a plan word: parsing the line with it gives the same plan.
        let mut line = p.words();
        line.extend(p.kernel_words());
        assert_eq!(Plan::parse(&line.join(" "), false), Ok(p));
    }

    #[test]
    fn fuzz_words() {
        let p = Plan::parse(
            "testbed.fuzz_time=5 testbed.fuzz=vhost-vsock testbed.fuzz_seed=9",
            false,
        )
        .unwrap();
        let f = p.fuzz.unwrap();
        assert_eq!((f.target, f.time_s, f.seed), (Target::VhostVsock, 5, 9));
        assert_eq!(Plan::parse(&p.words().join(" "), false).unwrap(), p);
        assert!(Plan::parse("testbed.fuzz=vhost-scsi", false).is_err());
        assert!(Plan::parse("testbed.fuzz=vhost-net testbed.fuzz_time=-1", false).is_err());
        assert!(!f.provoke, "provoke ops are off unless the boot says so");
        let p = Plan::parse("testbed.fuzz=vhost-net testbed.fuzz_provoke=1", false).unwrap();
        assert!(p.fuzz.unwrap().provoke);
        assert!(p.words().contains(&"testbed.fuzz_provoke=1".to_string()));
        assert_eq!(Plan::parse(&p.words().join(" "), false).unwrap(), p);
        assert!(Plan::parse("testbed.fuzz=vhost-net testbed.fuzz_provoke=yes", false).is_err());
        assert!(Plan::parse("testbed.fuzz=vhost-net testbed.fuzz_provoke=2", false).is_err());
    }

    #[test]
    fn words_round_trip() {
        assert!(Plan::default().words().is_empty());
        assert_eq!(Plan::parse("", false), Ok(Plan::default()));
        let mut p = Plan::default();
        for (k, v) in [
            ("workloads", "vhost-vsock,cmd,vhost-net-tx"),
            ("cover", "cmp"),
            ("local", "off"),
            ("area", "2048"),
            ("transport", "vsock"),
            ("port", "4321"),
            ("settle_ms", "7"),
            ("snapshot_ms", "0"),
            ("frames", "3"),
            ("size", "100"),
            ("queue", "32"),
            ("indirect", "on"),
            ("event_idx", "off"),
            ("mrg_rxbuf", "off"),
            ("vsock_cid", "9"),
            ("timeout_ms", "55"),
        ] {
            p.set(k, v).unwrap();
        }
        let words = p.words();
        assert_eq!(words.len(), 16, "{words:?}");
        assert_eq!(Plan::parse(&words.join(" "), true), Ok(p.clone()));
        // Each setting alone, too (only what differs from the default is rendered).
        for w in &words {
            let one = Plan::parse(w, w.contains("cmd")).unwrap();
            assert_eq!(one.words(), std::slice::from_ref(w), "{w}");
        }
        // set refuses what parse refuses.
        assert!(matches!(
            p.set("frobs", "1"),
            Err(PlanError::UnknownKey { .. })
        ));
        assert!(matches!(
            p.set("queue", "12"),
            Err(PlanError::BadValue { .. })
        ));
        assert!(matches!(
            p.set("workloads", "nope"),
            Err(PlanError::UnknownWorkload { .. })
        ));
    }
}
