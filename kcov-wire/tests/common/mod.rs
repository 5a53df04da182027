//! Shared test helpers.
#![allow(dead_code)]

use kcov_wire::*;

/// One or more samples of every frame type, including edge cases.
pub fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            agent_version: "guest-agent 0.1.0".into(),
            kernel_release: "6.12.0-kcov".into(),
            kcov_mode: KcovMode::Pc,
            area_words: 1 << 20,
            common_handle: 0x0000_0000_dead_beef,
        }),
        Frame::Hello(Hello {
            agent_version: String::new(),
            kernel_release: "ünïcødé ✓".into(),
            kcov_mode: KcovMode::Cmp,
            area_words: u32::MAX,
            common_handle: u64::MAX,
        }),
        Frame::WorkloadStart(WorkloadStart {
            name: "vhost-net-tx".into(),
        }),
        Frame::WorkloadStart(WorkloadStart {
            name: String::new(),
        }),
        Frame::WorkloadResult(WorkloadResult {
            name: "vhost-net-tx".into(),
            status: 0,
            duration_us: 123_456,
            counters: vec![("frames_tx".into(), 50), ("bytes".into(), u64::MAX)],
            error: None,
        }),
        Frame::WorkloadResult(WorkloadResult {
            name: "vhost-vsock".into(),
            status: -22,
            duration_us: 0,
            counters: vec![],
            error: Some("VHOST_SET_OWNER: EBUSY".into()),
        }),
        Frame::WorkloadResult(WorkloadResult {
            name: "x".into(),
            status: i32::MIN,
            duration_us: u64::MAX,
            counters: vec![(String::new(), 0)],
            error: Some(String::new()),
        }),
        Frame::CoverageChunk(CoverageChunk {
            workload: "vhost-net-tx".into(),
            source: CoverageSource::Remote,
            mode: KcovMode::Pc,
            seq: 0,
            overflow: false,
            words: vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010, 3],
        }),
        Frame::CoverageChunk(CoverageChunk {
            workload: "cmd".into(),
            source: CoverageSource::Local,
            mode: KcovMode::Cmp,
            seq: u32::MAX,
            overflow: true,
            words: vec![1, 2, 3, 4, 7, 0, u64::MAX, 0xffff_ffff_8100_0020],
        }),
        Frame::CoverageChunk(CoverageChunk {
            workload: "empty".into(),
            source: CoverageSource::Remote,
            mode: KcovMode::Cmp,
            seq: 5,
            overflow: true,
            words: vec![],
        }),
        Frame::Error(ErrorReport {
            message: "unknown workload `foo`".into(),
        }),
        Frame::Error(ErrorReport {
            message: String::new(),
        }),
        Frame::Done(Done { status: 0 }),
        Frame::Done(Done { status: -1 }),
        Frame::FuzzInput(FuzzInput {
            seq: 3,
            data: kcov_wire::program::Program::seed(kcov_wire::program::Target::VhostNet).encode(),
        }),
        Frame::FuzzInput(FuzzInput {
            seq: u64::MAX,
            data: vec![],
        }),
        Frame::FuzzStatus(FuzzStatus {
            seq: 7,
            new_pcs: 12,
            execs: 8,
            pcs: 900,
            remote_pcs: 300,
            corpus: 2,
            elapsed_ms: 1500,
            stream_us: 12_000,
        }),
    ]
}

/// A frame with the given raw header fields and payload, and a correct checksum.
pub fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(frame_type);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    fix_checksum(&mut out);
    out
}

/// Recomputes the checksum of a frame at the start of `buf` (header length field as is,
/// payload = whatever follows, up to the declared length).
pub fn fix_checksum(buf: &mut [u8]) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    let end = (HEADER_LEN + len).min(buf.len());
    let mut c = crc32fast::Hasher::new();
    c.update(&buf[..12]);
    c.update(&buf[HEADER_LEN..end]);
    let crc = c.finalize();
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Small deterministic PRNG (xorshift64*).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
