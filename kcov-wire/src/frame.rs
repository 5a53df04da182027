//! Frame types, protocol constants and limits.

/// First four bytes of every frame: ASCII `KCVW` ("kcov wire").
pub const MAGIC: [u8; 4] = *b"KCVW";
/// Protocol version this build speaks. A decoder rejects any other version.
pub const VERSION: u16 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// Largest payload a frame may carry (16 MiB).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Largest string (in UTF-8 bytes) any string field may hold (64 KiB).
pub const MAX_STRING_LEN: usize = 64 << 10;
/// Most `(name, value)` counters a [`WorkloadResult`] may carry.
pub const MAX_COUNTERS: usize = 1024;
/// Most u64 words one [`CoverageChunk`] may carry (1 Mi words = 8 MiB, i.e. 1 Mi PCs or
/// 256 Ki CMP entries). Together with the other fields this stays below [`MAX_PAYLOAD_LEN`].
pub const MAX_CHUNK_WORDS: usize = 1 << 20;

/// Frame type byte (header offset 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// [`Hello`]: first frame of a stream.
    Hello = 1,
    /// [`WorkloadStart`].
    WorkloadStart = 2,
    /// [`WorkloadResult`].
    WorkloadResult = 3,
    /// [`CoverageChunk`].
    CoverageChunk = 4,
    /// [`ErrorReport`].
    Error = 5,
    /// [`Done`]: last frame of a stream.
    Done = 6,
    /// [`FuzzInput`]: a fuzz program about to run.
    FuzzInput = 7,
    /// [`FuzzStatus`]: fuzzing progress, and which input added coverage.
    FuzzStatus = 8,
}

impl FrameType {
    /// The type for a wire byte, `None` if unknown.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => FrameType::Hello,
            2 => FrameType::WorkloadStart,
            3 => FrameType::WorkloadResult,
            4 => FrameType::CoverageChunk,
            5 => FrameType::Error,
            6 => FrameType::Done,
            7 => FrameType::FuzzInput,
            8 => FrameType::FuzzStatus,
            _ => return None,
        })
    }

    /// Human-readable name, used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "Hello",
            FrameType::WorkloadStart => "WorkloadStart",
            FrameType::WorkloadResult => "WorkloadResult",
            FrameType::CoverageChunk => "CoverageChunk",
            FrameType::Error => "Error",
            FrameType::Done => "Done",
            FrameType::FuzzInput => "FuzzInput",
            FrameType::FuzzStatus => "FuzzStatus",
        }
    }
}

/// kcov trace mode. The discriminants equal the kernel's `KCOV_TRACE_PC` / `KCOV_TRACE_CMP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KcovMode {
    /// One u64 word per entry: a PC (return address of the `__sanitizer_cov_trace_pc` call).
    Pc = 0,
    /// Four u64 words per entry: type, arg1, arg2, pc.
    Cmp = 1,
}

impl KcovMode {
    /// Number of u64 words one entry occupies in a kcov area and in a [`CoverageChunk`].
    pub fn words_per_entry(self) -> usize {
        match self {
            KcovMode::Pc => 1,
            KcovMode::Cmp => 4,
        }
    }

    /// The mode for a wire byte, `None` if unknown.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(KcovMode::Pc),
            1 => Some(KcovMode::Cmp),
            _ => None,
        }
    }
}

/// Where the coverage in a chunk was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CoverageSource {
    /// Remote coverage (`KCOV_REMOTE_ENABLE`, e.g. vhost worker threads under the common handle).
    Remote = 0,
    /// Local coverage of the agent thread's own syscalls (`KCOV_ENABLE`).
    Local = 1,
    /// Coverage of the *host* kernel (e.g. its vhost workers), collected by the VMM itself and
    /// written straight into the run store. Its PCs belong to another kernel than the guest's.
    /// A guest never sends it: a collector refuses a guest [`CoverageChunk`] claiming it.
    Host = 2,
}

impl CoverageSource {
    /// The source for a wire byte, `None` if unknown.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(CoverageSource::Remote),
            1 => Some(CoverageSource::Local),
            2 => Some(CoverageSource::Host),
            _ => None,
        }
    }

    /// `remote`, `local` or `host` (store file names, metadata, messages).
    pub fn name(self) -> &'static str {
        match self {
            CoverageSource::Remote => "remote",
            CoverageSource::Local => "local",
            CoverageSource::Host => "host",
        }
    }
}

/// First frame of a stream: who is talking and how kcov is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Agent version string (e.g. the crate version).
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Trace mode of the kcov areas.
    pub kcov_mode: KcovMode,
    /// kcov area size in u64 words (`KCOV_INIT_TRACE` argument).
    pub area_words: u32,
    /// The common handle used for `KCOV_REMOTE_ENABLE` (0 if none).
    pub common_handle: u64,
}

/// A workload is about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadStart {
    /// Workload name.
    pub name: String,
}

/// A workload finished (successfully or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadResult {
    /// Workload name.
    pub name: String,
    /// Exit status (0 = success).
    pub status: i32,
    /// Wall-clock duration in microseconds.
    pub duration_us: u64,
    /// Workload-defined counters, e.g. `("frames_tx", 50)`. Order is preserved.
    pub counters: Vec<(String, u64)>,
    /// Error message when the workload failed.
    pub error: Option<String>,
}

/// Part of the coverage of one workload. A kcov area is sent as one or more chunks with
/// consecutive `seq` numbers, possibly over several shipments (the agent's snapshots while the
/// workload runs, then the rest), each area entry once; see [`crate::chunk_coverage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageChunk {
    /// Workload name.
    pub workload: String,
    /// Remote or local coverage (a guest never sends [`CoverageSource::Host`]).
    pub source: CoverageSource,
    /// How `words` is to be read: PC mode one word per entry, CMP mode four.
    pub mode: KcovMode,
    /// Sequence number of this chunk within its (workload, source) stream.
    pub seq: u32,
    /// The kcov area this chunk was drained from was full: coverage was lost.
    pub overflow: bool,
    /// Raw area words (without the count word 0). In CMP mode the length is a multiple of 4.
    pub words: Vec<u64>,
}

impl CoverageChunk {
    /// Number of entries (PCs in PC mode, comparisons in CMP mode).
    pub fn entry_count(&self) -> usize {
        self.words.len() / self.mode.words_per_entry()
    }
}

/// Agent-level error report: unknown workload, bad plan, kcov missing, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReport {
    /// Human-readable message.
    pub message: String,
}

/// Last frame of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Overall agent status (0 = every workload succeeded).
    pub status: i32,
}

/// A fuzz program (`crate::program`, binary form) the agent is about to run, sent and
/// flushed before it runs: when the kernel dies running it, the host has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzInput {
    /// Execution number within the stream (0, 1, ...).
    pub seq: u64,
    /// The encoded program, at most [`crate::program::MAX_PROGRAM_BYTES`] bytes.
    pub data: Vec<u8>,
}

/// Fuzzing progress. With `new_pcs > 0` it says that input `seq` added coverage and is a
/// corpus entry; with `new_pcs == 0` it is a periodic progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzStatus {
    /// The input this status is about (the last one run, for a progress report).
    pub seq: u64,
    /// Distinct PCs (remote and local) the input added to the campaign's set.
    pub new_pcs: u32,
    /// Executions so far.
    pub execs: u64,
    /// Distinct PCs so far (remote and local together).
    pub pcs: u32,
    /// Distinct remote (vhost worker) PCs so far.
    pub remote_pcs: u32,
    /// Corpus entries so far.
    pub corpus: u32,
    /// Milliseconds since the agent's campaign started (the guest's clock).
    pub elapsed_ms: u64,
    /// Microseconds of that the agent spent sending and flushing the stream.
    pub stream_us: u64,
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`WorkloadStart`].
    WorkloadStart(WorkloadStart),
    /// See [`WorkloadResult`].
    WorkloadResult(WorkloadResult),
    /// See [`CoverageChunk`].
    CoverageChunk(CoverageChunk),
    /// See [`ErrorReport`].
    Error(ErrorReport),
    /// See [`Done`].
    Done(Done),
    /// See [`FuzzInput`].
    FuzzInput(FuzzInput),
    /// See [`FuzzStatus`].
    FuzzStatus(FuzzStatus),
}

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::WorkloadStart(_) => FrameType::WorkloadStart,
            Frame::WorkloadResult(_) => FrameType::WorkloadResult,
            Frame::CoverageChunk(_) => FrameType::CoverageChunk,
            Frame::Error(_) => FrameType::Error,
            Frame::Done(_) => FrameType::Done,
            Frame::FuzzInput(_) => FrameType::FuzzInput,
            Frame::FuzzStatus(_) => FrameType::FuzzStatus,
        }
    }
}

macro_rules! impl_from {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for Frame {
            fn from(v: $ty) -> Self {
                Frame::$variant(v)
            }
        })*
    };
}
impl_from!(
    Hello(Hello),
    WorkloadStart(WorkloadStart),
    WorkloadResult(WorkloadResult),
    CoverageChunk(CoverageChunk),
    Error(ErrorReport),
    Done(Done),
    FuzzInput(FuzzInput),
    FuzzStatus(FuzzStatus)
);
