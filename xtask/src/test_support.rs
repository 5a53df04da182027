//! Fixtures the xtask unit tests share (compiled for tests only): a small site table and the
//! stream of one workload over it.

use std::sync::Arc;

use coverage::{CallSite, Frame as SourceFrame, SiteKind, SiteTable};
use kcov_wire::{
    encode, CoverageChunk, CoverageSource, Done, Frame, Hello, KcovMode, WorkloadResult,
    WorkloadStart,
};

/// drivers/vhost/net.c: handle_tx lines 10, 11, 12 at 0x10, 0x20, 0x30 (PCs 0x15, 0x25, 0x35);
/// drivers/vhost/vhost.c: vhost_poll line 50 at 0x40 (PC 0x45).
pub fn table() -> Arc<SiteTable> {
    let frame = |func: &str, file: &str, line: u32| SourceFrame {
        function: Some(Arc::from(func)),
        file: Some(Arc::from(file)),
        line: Some(line),
    };
    let site = |a: u64| CallSite {
        call_addr: a,
        call_len: 5,
        ret_addr: a + 5,
        kind: SiteKind::Pc,
        tail: false,
    };
    Arc::new(SiteTable {
        sites: vec![site(0x10), site(0x20), site(0x30), site(0x40)],
        frames: vec![
            vec![frame("handle_tx", "drivers/vhost/net.c", 10)],
            vec![frame("handle_tx", "drivers/vhost/net.c", 11)],
            vec![frame("handle_tx", "drivers/vhost/net.c", 12)],
            vec![frame("vhost_poll", "drivers/vhost/vhost.c", 50)],
        ],
        ..SiteTable::default()
    })
}

/// The Hello of the streams these tests collect.
pub fn hello() -> Frame {
    Frame::Hello(Hello {
        agent_version: "t".into(),
        kernel_release: "6.12.117".into(),
        kcov_mode: KcovMode::Pc,
        area_words: 1 << 16,
        common_handle: 0x42,
    })
}

/// The stream of one workload `w` that ships `pcs` (remote) and ends, like the agent, with
/// `status` (its error "boom" when non-zero).
pub fn workload_stream(pcs: &[u64], status: i32) -> Vec<u8> {
    let frames = [
        hello(),
        Frame::WorkloadStart(WorkloadStart { name: "w".into() }),
        Frame::CoverageChunk(CoverageChunk {
            workload: "w".into(),
            source: CoverageSource::Remote,
            mode: KcovMode::Pc,
            seq: 0,
            overflow: false,
            words: pcs.to_vec(),
        }),
        Frame::WorkloadResult(WorkloadResult {
            name: "w".into(),
            status,
            duration_us: 1,
            counters: vec![],
            error: (status != 0).then(|| "boom".to_string()),
        }),
        Frame::Done(Done { status }),
    ];
    frames.iter().flat_map(|f| encode(f).unwrap()).collect()
}
