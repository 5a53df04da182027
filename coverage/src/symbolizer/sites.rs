//! Stage 1: instrumented call sites. Decodes the code of every function symbol with iced-x86
//! and records each direct `call` to a kcov hook, then maps kcov PCs (return addresses) back to
//! those call instructions.

use std::collections::{BTreeMap, HashMap};

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

use super::vmlinux::Vmlinux;
use super::Error;

/// The PC-tracing hook (`KCOV_TRACE_PC`).
pub const TRACE_PC_HOOK: &str = "__sanitizer_cov_trace_pc";

/// Comparison hooks (`KCOV_TRACE_CMP`, `CONFIG_KCOV_ENABLE_COMPARISONS`).
pub const TRACE_CMP_HOOKS: [&str; 9] = [
    "__sanitizer_cov_trace_cmp1",
    "__sanitizer_cov_trace_cmp2",
    "__sanitizer_cov_trace_cmp4",
    "__sanitizer_cov_trace_cmp8",
    "__sanitizer_cov_trace_const_cmp1",
    "__sanitizer_cov_trace_const_cmp2",
    "__sanitizer_cov_trace_const_cmp4",
    "__sanitizer_cov_trace_const_cmp8",
    "__sanitizer_cov_trace_switch",
];

/// Which hook a site calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    /// `__sanitizer_cov_trace_pc`: one per basic block, what KCOV_TRACE_PC records.
    Pc,
    /// A `__sanitizer_cov_trace_{const_,}cmp{1,2,4,8}` or `__sanitizer_cov_trace_switch` call.
    Cmp,
}

/// One instrumented call instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallSite {
    /// Address of the `call` instruction (what gets symbolized).
    pub call_addr: u64,
    /// Instruction length in bytes (5 for `call rel32`).
    pub call_len: u8,
    /// `call_addr + call_len`: the return address, i.e. what kcov records.
    pub ret_addr: u64,
    /// Which hook.
    pub kind: SiteKind,
    /// Not a hook call: a call to a function that reaches the hook only by tail jumps (its last
    /// block ends in `jmp __sanitizer_cov_trace_pc`, directly or through other tail jumps). The
    /// hook then records *this* call's return address, so the PC is credited to this call's
    /// line in the caller.
    pub tail: bool,
}

/// A `jmp`/`jcc` to a kcov hook (gcc turns a trailing hook call into a tail call). The hook then records
/// the *caller's* return address, so such coverage shows up as PCs in other functions (usually
/// as `unmatched`); listed so reports can say how much of it there is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TailCall {
    /// Address of the `jmp`.
    pub addr: u64,
    /// Which hook.
    pub kind: SiteKind,
}

/// The result of [`enumerate_sites`].
#[derive(Clone, Debug, Default)]
pub struct SiteScan {
    /// Instrumented calls, sorted by `call_addr`, no duplicates.
    pub sites: Vec<CallSite>,
    /// Tail jumps to hooks, sorted by address.
    pub tail_calls: Vec<TailCall>,
    /// Sized function symbols decoded.
    pub functions_scanned: usize,
    /// Bytes decoded inside sized function symbols.
    pub bytes_scanned: u64,
    /// Invalid encodings inside sized function symbols (data in code, a function that runs past
    /// its `st_size`, an instruction iced does not know).
    pub decode_errors: u64,
    /// Bytes of executable sections outside every sized function symbol (padding, assembly,
    /// functions whose symbol is missing), decoded linearly from each gap start and from every
    /// unsized symbol in it.
    pub gap_bytes_scanned: u64,
    /// Invalid encodings in those gaps (expected: padding and data).
    pub gap_decode_errors: u64,
    /// Sites found in gaps (code without a sized symbol; DWARF may still know it).
    pub gap_sites: usize,
    /// Of `sites`, calls to functions that reach a hook by tail jumps ([`CallSite::tail`]).
    pub tail_return_sites: usize,
}

impl SiteScan {
    /// Hook calls of one kind (sites reached through tail jumps not included).
    pub fn count(&self, kind: SiteKind) -> usize {
        self.sites
            .iter()
            .filter(|s| s.kind == kind && !s.tail)
            .count()
    }

    /// `Some(len)` when every site's `ret_addr - call_addr` is the same `len` (5 on x86_64 with
    /// `call rel32`): the offset to subtract from a kcov PC, measured rather than assumed.
    pub fn uniform_return_offset(&self) -> Option<u64> {
        let first = self.sites.first()?;
        let off = first.ret_addr - first.call_addr;
        self.sites
            .iter()
            .all(|s| s.ret_addr - s.call_addr == off)
            .then_some(off)
    }
}

/// Hook addresses and their kinds, from the symbol table (a handful: looked up linearly).
#[derive(Clone, Debug, Default)]
struct Hooks {
    hooks: Vec<(u64, SiteKind)>,
    min: u64,
    max: u64,
}

impl Hooks {
    fn new(vmlinux: &Vmlinux) -> Self {
        let mut hooks = Vec::new();
        for f in vmlinux.symbols().functions() {
            let kind = if f.name == TRACE_PC_HOOK {
                SiteKind::Pc
            } else if TRACE_CMP_HOOKS.contains(&f.name.as_str()) {
                SiteKind::Cmp
            } else {
                continue;
            };
            // Like a map keyed by address: a later symbol at the same address wins.
            match hooks
                .iter_mut()
                .find(|h: &&mut (u64, SiteKind)| h.0 == f.addr)
            {
                Some(h) => h.1 = kind,
                None => hooks.push((f.addr, kind)),
            }
        }
        let min = hooks.iter().map(|h| h.0).min().unwrap_or(u64::MAX);
        let max = hooks.iter().map(|h| h.0).max().unwrap_or(0);
        Hooks { hooks, min, max }
    }

    #[inline]
    fn get(&self, addr: u64) -> Option<SiteKind> {
        if addr < self.min || addr > self.max {
            return None;
        }
        self.hooks.iter().find(|h| h.0 == addr).map(|h| h.1)
    }

    fn contains(&self, addr: u64) -> bool {
        self.get(addr).is_some()
    }
}

/// What decoding some code found.
#[derive(Default)]
struct Decoded {
    sites: Vec<CallSite>,
    tail_calls: Vec<TailCall>,
    errors: u64,
    /// Every other direct call: (target, the call as a site), kept until the functions that
    /// tail-jump into a hook are known ([`tail_return_sites`]).
    calls: Vec<(u64, CallSite)>,
    /// Direct `jmp`/`jcc` out of the span being decoded (a tail call): (target, span start).
    jumps: Vec<(u64, u64)>,
    /// Spans (by start) that tail-jump into a hook, with the hook's kind.
    hook_tails: Vec<(u64, SiteKind)>,
}

/// Decodes `code` (at `ip`) linearly, collecting hook calls and tail jumps and counting invalid
/// encodings.
fn decode_range(code: &[u8], ip: u64, hooks: &Hooks, out: &mut Decoded) {
    let mut instr = Instruction::default();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let span = ip..ip.saturating_add(code.len() as u64);
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            out.errors += 1;
            continue;
        }
        if instr.op0_kind() != OpKind::NearBranch64 {
            continue;
        }
        let target = instr.near_branch_target();
        let jump = instr.is_jmp_short_or_near() || instr.is_jcc_short_or_near();
        let site = |kind, tail| CallSite {
            call_addr: instr.ip(),
            call_len: instr.len() as u8,
            ret_addr: instr.next_ip(),
            kind,
            tail,
        };
        match hooks.get(target) {
            Some(kind) if instr.is_call_near() => out.sites.push(site(kind, false)),
            Some(kind) if jump => {
                out.tail_calls.push(TailCall {
                    addr: instr.ip(),
                    kind,
                });
                out.hook_tails.push((span.start, kind));
            }
            Some(_) => {}
            None if instr.is_call_near() => out.calls.push((target, site(SiteKind::Pc, true))),
            None if jump && !span.contains(&target) => out.jumps.push((target, span.start)),
            None => {}
        }
    }
}

/// The calls whose return address a hook records although they call no hook: calls to a
/// function that tail-jumps into a hook (gcc turns a trailing `call hook; ret` into
/// `jmp hook`), directly or through a chain of tail jumps to such functions. A function is a
/// decoded span (a sized symbol, or code from an unsized symbol on); a tail jump is a direct
/// `jmp`/`jcc` out of it. Calls through pointers or thunks stay unknown (their PCs stay
/// `unmatched`).
fn tail_return_sites(d: &Decoded) -> Vec<CallSite> {
    // Function start → the hook kinds its tail jumps reach (bit 0 PC, bit 1 CMP).
    let bit = |k: SiteKind| match k {
        SiteKind::Pc => 1u8,
        SiteKind::Cmp => 2u8,
    };
    let mut reach: HashMap<u64, u8> = HashMap::new();
    let mut queue: Vec<u64> = Vec::new();
    for &(f, k) in &d.hook_tails {
        let e = reach.entry(f).or_default();
        if *e & bit(k) == 0 {
            *e |= bit(k);
            queue.push(f);
        }
    }
    let mut jumpers: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(target, from) in &d.jumps {
        jumpers.entry(target).or_default().push(from);
    }
    while let Some(g) = queue.pop() {
        let bits = reach.get(&g).copied().unwrap_or(0);
        for &f in jumpers.get(&g).map(Vec::as_slice).unwrap_or(&[]) {
            let e = reach.entry(f).or_default();
            if *e | bits != *e {
                *e |= bits;
                queue.push(f);
            }
        }
    }
    d.calls
        .iter()
        .filter_map(|(target, site)| {
            let bits = *reach.get(target)?;
            let kind = if bits & 1 != 0 {
                SiteKind::Pc
            } else {
                SiteKind::Cmp
            };
            Some(CallSite { kind, ..*site })
        })
        .collect()
}

/// Code to decode linearly from its start.
struct Span<'a> {
    ip: u64,
    code: &'a [u8],
}

/// Decodes every span, on up to `threads` threads (spans are handed out in runs of about
/// 256 KiB), appending sites and tail calls to `all` in span order (with room for `extra`
/// more sites, so that appending more later does not move them); the number of sites added.
fn decode_spans(
    spans: &[Span<'_>],
    hooks: &Hooks,
    threads: usize,
    all: &mut Decoded,
    extra: usize,
) -> usize {
    const CHUNK: usize = 256 << 10;
    let mut chunks = Vec::new();
    let (mut first, mut bytes) = (0, 0);
    for (i, span) in spans.iter().enumerate() {
        bytes += span.code.len();
        if bytes >= CHUNK {
            chunks.push(first..i + 1);
            (first, bytes) = (i + 1, 0);
        }
    }
    if first < spans.len() {
        chunks.push(first..spans.len());
    }
    // Each thread decodes into one buffer (room reserved for far more sites than real code
    // has: untouched reserved memory costs nothing), noting which chunk filled which part.
    let total: usize = spans.iter().map(|s| s.code.len()).sum();
    let threads = threads.clamp(1, chunks.len().max(1));
    let reserve = total / threads / 16;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = || {
        let mut out = Decoded {
            sites: Vec::with_capacity(reserve),
            ..Decoded::default()
        };
        let mut parts = Vec::new();
        loop {
            let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(chunk) = chunks.get(c) else { break };
            let (s, t) = (out.sites.len(), out.tail_calls.len());
            for span in &spans[chunk.clone()] {
                decode_range(span.code, span.ip, hooks, &mut out);
            }
            parts.push((c, s..out.sites.len(), t..out.tail_calls.len()));
        }
        (out, parts)
    };
    let mut decoded = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(run)).collect();
        let mut all = vec![run()];
        for h in others {
            all.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        all
    });
    // Concatenate in chunk (address) order.
    let mut order: Vec<(usize, usize, std::ops::Range<usize>, std::ops::Range<usize>)> = decoded
        .iter_mut()
        .enumerate()
        .flat_map(|(t, (_, parts))| {
            std::mem::take(parts)
                .into_iter()
                .map(move |(c, s, tc)| (c, t, s, tc))
        })
        .collect();
    order.sort_unstable_by_key(|o| o.0);
    let sites: usize = decoded.iter().map(|d| d.0.sites.len()).sum();
    all.sites.reserve(sites + extra);
    all.tail_calls
        .reserve(decoded.iter().map(|d| d.0.tail_calls.len()).sum());
    all.errors += decoded.iter().map(|d| d.0.errors).sum::<u64>();
    for (_, t, s, tc) in order {
        all.sites.extend_from_slice(&decoded[t].0.sites[s]);
        all.tail_calls
            .extend_from_slice(&decoded[t].0.tail_calls[tc]);
    }
    // Order does not matter for these: they only feed [`tail_return_sites`].
    for (d, _) in decoded {
        all.calls.extend(d.calls);
        all.jumps.extend(d.jumps);
        all.hook_tails.extend(d.hook_tails);
    }
    sites
}

/// Finds every direct call (and tail jump) to a kcov hook. Code is decoded linearly per sized
/// function symbol, so padding and data between functions cannot desynchronise the decoder;
/// the bytes no sized symbol covers are decoded afterwards, restarting at every unsized symbol.
/// Decodes on as many threads as the machine has (at most 8).
pub fn enumerate_sites(vmlinux: &Vmlinux) -> Result<SiteScan, Error> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    enumerate_sites_on(vmlinux, threads)
}

/// [`enumerate_sites`] on at most `threads` threads; the result does not depend on it.
pub fn enumerate_sites_on(vmlinux: &Vmlinux, threads: usize) -> Result<SiteScan, Error> {
    if vmlinux.architecture() != object::Architecture::X86_64 {
        return Err(Error::UnsupportedArch {
            path: vmlinux.path().to_path_buf(),
            arch: format!("{:?}", vmlinux.architecture()),
        });
    }
    let hooks = Hooks::new(vmlinux);
    if !hooks.hooks.iter().any(|h| h.1 == SiteKind::Pc) {
        return Err(Error::NotInstrumented {
            path: vmlinux.path().to_path_buf(),
        });
    }

    let mut scan = SiteScan::default();
    // Sized symbols that lie in executable sections (hooks included: they count as covered).
    let mut covered: Vec<std::ops::Range<u64>> = Vec::new();
    let mut anchors: Vec<u64> = Vec::new();
    let mut spans = Vec::new();
    for f in vmlinux.symbols().functions() {
        if f.size == 0 {
            anchors.push(f.addr);
            continue;
        }
        let Some(code) = vmlinux.code(f.addr, f.size) else {
            continue;
        };
        covered.push(f.range());
        if hooks.contains(f.addr) {
            continue;
        }
        scan.functions_scanned += 1;
        scan.bytes_scanned += f.size;
        spans.push(Span { ip: f.addr, code });
    }

    // Gaps: executable bytes outside every sized symbol.
    covered.sort_unstable_by_key(|r| r.start);
    let mut gap_spans = Vec::new();
    for section in vmlinux.exec_sections() {
        let sec = section.addr_range();
        let mut gaps = Vec::new();
        let mut cursor = sec.start;
        let first = covered.partition_point(|r| r.end <= sec.start);
        for r in covered[first..].iter().take_while(|r| r.start < sec.end) {
            if r.start > cursor {
                gaps.push(cursor..r.start);
            }
            cursor = cursor.max(r.end);
        }
        if cursor < sec.end {
            gaps.push(cursor..sec.end);
        }
        for gap in gaps {
            let lo = anchors.partition_point(|a| *a <= gap.start);
            let hi = anchors.partition_point(|a| *a < gap.end);
            let starts = std::iter::once(gap.start).chain(anchors[lo..hi].iter().copied());
            let ends = anchors[lo..hi]
                .iter()
                .copied()
                .chain(std::iter::once(gap.end));
            for (start, end) in starts.zip(ends) {
                let Some(code) = vmlinux.code(start, end - start) else {
                    continue;
                };
                scan.gap_bytes_scanned += end - start;
                gap_spans.push(Span { ip: start, code });
            }
        }
    }

    let mut gaps = Decoded::default();
    decode_spans(&gap_spans, &hooks, threads, &mut gaps, 0);
    let mut all = Decoded::default();
    decode_spans(&spans, &hooks, threads, &mut all, gaps.sites.len());
    scan.decode_errors = all.errors;
    scan.gap_decode_errors = gaps.errors;
    scan.gap_sites = gaps.sites.len();
    all.sites.extend_from_slice(&gaps.sites);
    all.tail_calls.extend_from_slice(&gaps.tail_calls);
    all.calls.append(&mut gaps.calls);
    all.jumps.append(&mut gaps.jumps);
    all.hook_tails.append(&mut gaps.hook_tails);
    let tail_returns = tail_return_sites(&all);
    scan.sites = all.sites;
    scan.sites.extend_from_slice(&tail_returns);
    scan.tail_calls = all.tail_calls;

    // Overlapping symbols (aliases with different sizes) decode the same bytes twice. (Equal
    // elements are identical, so every sort gives the same order.)
    scan.sites.sort_unstable();
    scan.sites.dedup_by_key(|s| s.call_addr);
    scan.tail_return_sites = scan.sites.iter().filter(|s| s.tail).count();
    scan.tail_calls.sort_unstable();
    scan.tail_calls.dedup_by_key(|t| t.addr);
    Ok(scan)
}

/// Raw kcov PCs mapped onto call sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PcMapping {
    /// Site `call_addr` → how many raw PCs hit it.
    pub hits: BTreeMap<u64, u64>,
    /// PCs that are no site's return address → how many times each was seen.
    pub unmatched: BTreeMap<u64, u64>,
}

impl PcMapping {
    /// Raw PCs that matched a site.
    pub fn matched_pcs(&self) -> u64 {
        self.hits.values().sum()
    }

    /// Raw PCs that matched nothing.
    pub fn unmatched_pcs(&self) -> u64 {
        self.unmatched.values().sum()
    }
}

/// Maps kcov PCs (return addresses) to call sites by exact match on `ret_addr`.
/// `sites` must be sorted by `call_addr` (as [`enumerate_sites`] returns them).
pub fn map_pcs(sites: &[CallSite], pcs: impl IntoIterator<Item = u64>) -> PcMapping {
    debug_assert!(sites.windows(2).all(|w| w[0].ret_addr <= w[1].ret_addr));
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for pc in pcs {
        *counts.entry(pc).or_default() += 1;
    }
    let mut mapping = PcMapping::default();
    for (pc, n) in counts {
        match sites.binary_search_by_key(&pc, |s| s.ret_addr) {
            Ok(i) => *mapping.hits.entry(sites[i].call_addr).or_default() += n,
            Err(_) => *mapping.unmatched.entry(pc).or_default() += n,
        }
    }
    mapping
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(call_addr: u64) -> CallSite {
        CallSite {
            call_addr,
            call_len: 5,
            ret_addr: call_addr + 5,
            kind: SiteKind::Pc,
            tail: false,
        }
    }

    #[test]
    fn map_pcs_matches_return_addresses_only() {
        let sites = [site(0x100), site(0x110), site(0x120)];
        let m = map_pcs(&sites, [0x105, 0x105, 0x125, 0x110, 0x999]);
        assert_eq!(m.hits, BTreeMap::from([(0x100, 2), (0x120, 1)]));
        // 0x110 is a call address, not a return address: kcov never records it.
        assert_eq!(m.unmatched, BTreeMap::from([(0x110, 1), (0x999, 1)]));
        assert_eq!(m.matched_pcs(), 3);
        assert_eq!(m.unmatched_pcs(), 2);
    }

    #[test]
    fn uniform_offset() {
        let mut scan = SiteScan {
            sites: vec![site(0x100), site(0x200)],
            ..SiteScan::default()
        };
        assert_eq!(scan.uniform_return_offset(), Some(5));
        scan.sites.push(CallSite {
            call_addr: 0x300,
            call_len: 6,
            ret_addr: 0x306,
            kind: SiteKind::Cmp,
            tail: false,
        });
        assert_eq!(scan.uniform_return_offset(), None);
        assert_eq!(scan.count(SiteKind::Cmp), 1);
    }

    /// `call rel32` / `jmp rel32` at `ip` to `target`.
    fn rel32(op: u8, ip: u64, target: u64) -> Vec<u8> {
        let rel = (target as i64 - (ip as i64 + 5)) as i32;
        let mut v = vec![op];
        v.extend_from_slice(&rel.to_le_bytes());
        v
    }

    #[test]
    fn calls_into_tail_jumping_functions_are_sites() {
        const HOOK: u64 = 0x9000;
        let hooks = Hooks {
            hooks: vec![(HOOK, SiteKind::Pc)],
            min: HOOK,
            max: HOOK,
        };
        let (call, jmp) = (0xe8, 0xe9);
        let mut d = Decoded::default();
        // 0x1000 caller: calls the hook, f, g, h and itself-free plain.
        let mut caller = Vec::new();
        for (i, target) in [HOOK, 0x2000, 0x3000, 0x4000, 0x5000].iter().enumerate() {
            caller.extend(rel32(call, 0x1000 + 5 * i as u64, *target));
        }
        decode_range(&caller, 0x1000, &hooks, &mut d);
        // f: `jmp hook` (gcc's tail call of the trailing hook call).
        decode_range(&rel32(jmp, 0x2000, HOOK), 0x2000, &hooks, &mut d);
        // g: tail-jumps to f.
        decode_range(&rel32(jmp, 0x3000, 0x2000), 0x3000, &hooks, &mut d);
        // h: calls f (no tail jump): the hook records h's call, not h's caller's.
        decode_range(&rel32(call, 0x4000, 0x2000), 0x4000, &hooks, &mut d);
        // k: a jump inside itself, then ret.
        decode_range(&[0xeb, 0x00, 0xc3], 0x5000, &hooks, &mut d);
        assert_eq!(d.sites.len(), 1, "one hook call");
        assert_eq!(d.tail_calls.len(), 1);
        let mut got: Vec<u64> = tail_return_sites(&d).iter().map(|s| s.call_addr).collect();
        got.sort_unstable();
        // Calls to f (0x1005, 0x4000) and to g (0x100a); not to h or k.
        assert_eq!(got, vec![0x1005, 0x100a, 0x4000]);
        assert!(tail_return_sites(&d)
            .iter()
            .all(|s| s.tail && s.kind == SiteKind::Pc));
        // They map kcov PCs that were unmatched before.
        let mut sites = d.sites.clone();
        sites.extend(tail_return_sites(&d));
        sites.sort_unstable();
        let m = map_pcs(&sites, [0x100a, 0x100f]);
        assert_eq!(m.hits, BTreeMap::from([(0x1005, 1), (0x100a, 1)]));
        assert!(m.unmatched.is_empty());
    }
}
