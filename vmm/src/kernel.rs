//! Recognising and loading the kernel image: a bzImage or an ELF vmlinux, loaded
//! with linux-loader. Before loading, the headers are checked against the file
//! length and the guest RAM so that a truncated file, a non-kernel or a too-small
//! `--mem` each give one precise error instead of a loader failure.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::bootparams::{KERNEL_HDR_MAGIC, LOADED_HIGH};
use crate::arch::x86_64::layout::{low_ram_end, HIMEM_START, LINUX64_ENTRY_OFFSET};

/// Why a file is not a kernel we can load. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Neither a bzImage nor an x86-64 ELF.
    #[error("{path} is not a bootable x86-64 Linux kernel: {reason}")]
    NotAKernel {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before the image does.
    #[error("kernel {path} is truncated: {reason}")]
    Truncated {
        /// Path.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}: {reason}")]
    Load {
        /// Path.
        path: PathBuf,
        /// linux-loader's error.
        reason: String,
    },
    /// The image does not fit in guest RAM.
    #[error("--mem {mem_mib} MiB is too small: {what} needs at least {need_mib} MiB")]
    MemTooSmall {
        /// Configured MiB.
        mem_mib: u64,
        /// MiB needed.
        need_mib: u64,
        /// What does not fit.
        what: String,
    },
}

/// Offset of the setup header in a bzImage (boot.rst).
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// `xloadflags` bit 0, XLF_KERNEL_64: the kernel has the 64-bit entry at +0x200 (boot.rst).
pub const XLF_KERNEL_64: u16 = 0x1;
/// ELF machine x86-64.
const EM_X86_64: u16 = 62;
/// ELF program header type PT_LOAD.
const PT_LOAD: u32 = 1;

/// The two image formats we boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// bzImage (arch/x86/boot): setup code + compressed kernel.
    BzImage,
    /// ELF vmlinux (or any static x86-64 ELF, such as our test guests).
    Elf,
}

/// How the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH if the ELF has a XEN_ELFNOTE_PHYS32_ENTRY note, otherwise the 64-bit Linux entry.
    #[default]
    Auto,
    /// 64-bit Linux boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, EBX = hvm_start_info (ELF with a PVH note only).
    Pvh,
}

/// Where and how the kernel was loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Format of the image.
    pub format: KernelFormat,
    /// The protocol chosen (never `Auto`).
    pub protocol: BootProtocol,
    /// Entry point (guest physical).
    pub entry: u64,
    /// One past the highest address the kernel needs before it reads the E820 map;
    /// the initrd goes above this.
    pub reserved_end: u64,
    /// Setup header of a bzImage.
    pub setup_header: Option<setup_header>,
}

fn read_at(f: &mut File, off: u64, buf: &mut [u8]) -> std::io::Result<bool> {
    f.seek(SeekFrom::Start(off))?;
    match f.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Identify the image format from its magic numbers.
pub fn detect_format(path: &Path) -> Result<(File, u64, KernelFormat), KernelError> {
    let io = |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 4];
    if read_at(&mut f, 0, &mut magic).map_err(io)? && magic == *b"\x7fELF" {
        return Ok((f, len, KernelFormat::Elf));
    }
    let mut hdrs = [0u8; 4];
    if read_at(&mut f, 0x202, &mut hdrs).map_err(io)?
        && u32::from_le_bytes(hdrs) == KERNEL_HDR_MAGIC
    {
        return Ok((f, len, KernelFormat::BzImage));
    }
    Err(KernelError::NotAKernel {
        path: path.to_path_buf(),
        reason: format!("no ELF magic and no bzImage \"HdrS\" magic at offset 0x202 ({len} bytes)"),
    })
}

/// Whether `path` is a kernel we can boot at all (format and headers; memory size aside).
pub fn check_kernel(path: &Path) -> Result<KernelFormat, KernelError> {
    let (mut f, len, format) = detect_format(path)?;
    // Memory is checked against the VM's size when loading; here only the file counts.
    const ANY_MEM: u64 = 1 << 40;
    let r = match format {
        KernelFormat::BzImage => check_bzimage(&mut f, path, len, ANY_MEM).map(|_| ()),
        KernelFormat::Elf => check_elf(&mut f, path, len, ANY_MEM).map(|_| ()),
    };
    match r {
        Ok(()) | Err(KernelError::MemTooSmall { .. }) => Ok(format),
        Err(e) => Err(e),
    }
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

fn read_setup_header(f: &mut File, path: &Path) -> Result<setup_header, KernelError> {
    let mut hdr = setup_header::default();
    let ok =
        read_at(f, SETUP_HEADER_OFFSET, hdr.as_mut_slice()).map_err(|source| KernelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if !ok {
        return Err(KernelError::Truncated {
            path: path.to_path_buf(),
            reason: "file ends inside the setup header".into(),
        });
    }
    Ok(hdr)
}

fn check_bzimage(
    f: &mut File,
    path: &Path,
    len: u64,
    mem_size: u64,
) -> Result<(setup_header, u64), KernelError> {
    let hdr = read_setup_header(f, path)?;
    let not = |reason: String| KernelError::NotAKernel {
        path: path.to_path_buf(),
        reason,
    };
    if hdr.version < 0x0200 || hdr.loadflags & LOADED_HIGH == 0 {
        return Err(not(format!(
            "zImage or boot protocol {:#x} too old (need a bzImage)",
            { hdr.version }
        )));
    }
    if hdr.version >= 0x020c && hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(not(
            "32-bit kernel: no 64-bit entry point (XLF_KERNEL_64 unset)".into(),
        ));
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (setup_sects + 1) * 512;
    // syssize: size of the protected-mode code in 16-byte paragraphs (protocol 2.04+).
    let payload = if hdr.version >= 0x0204 {
        u64::from(hdr.syssize) * 16
    } else {
        len.saturating_sub(setup_size)
    };
    if setup_size + payload > len {
        return Err(KernelError::Truncated {
            path: path.to_path_buf(),
            reason: format!(
                "header says {} bytes (setup {} + kernel {}), file has {}",
                setup_size + payload,
                setup_size,
                payload,
                len
            ),
        });
    }
    // The compressed kernel goes at code32_start (1 MiB); it decompresses itself
    // to pref_address and needs init_size bytes from there (boot.rst `init_size`).
    // Header fields are the file's word: checked arithmetic (pref_address may be anything).
    let load_end = u64::from(hdr.code32_start).max(HIMEM_START) + payload;
    let runtime_end = if hdr.version >= 0x020a {
        let pref = { hdr.pref_address };
        pref.max(HIMEM_START)
            .checked_add(u64::from(hdr.init_size))
            .ok_or_else(|| {
                not(format!(
                    "pref_address {pref:#x} + init_size {:#x} overflows",
                    { hdr.init_size }
                ))
            })?
    } else {
        load_end
    };
    let need = load_end.max(runtime_end);
    if need > low_ram_end(mem_size) {
        return Err(KernelError::MemTooSmall {
            mem_mib: mem_size >> 20,
            need_mib: mib_ceil(need),
            what: format!("kernel {} (loaded and decompressed)", path.display()),
        });
    }
    Ok((hdr, need))
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn check_elf(f: &mut File, path: &Path, len: u64, mem_size: u64) -> Result<u64, KernelError> {
    let io = |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let trunc = |reason: String| KernelError::Truncated {
        path: path.to_path_buf(),
        reason,
    };
    let not = |reason: String| KernelError::NotAKernel {
        path: path.to_path_buf(),
        reason,
    };
    let mut eh = [0u8; 64];
    if !read_at(f, 0, &mut eh).map_err(io)? {
        return Err(trunc("file ends inside the ELF header".into()));
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(not("ELF is not 64-bit little-endian".into()));
    }
    if le16(&eh, 18) != EM_X86_64 {
        return Err(not(format!("ELF machine {} is not x86-64", le16(&eh, 18))));
    }
    let phoff = le64(&eh, 0x20);
    let phentsize = u64::from(le16(&eh, 0x36));
    let phnum = u64::from(le16(&eh, 0x38));
    if phnum == 0 || phentsize != 56 {
        return Err(not("ELF has no usable program headers".into()));
    }
    let ph_end = phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff))
        .ok_or_else(|| not("ELF program header table out of range".into()))?;
    if ph_end > len {
        return Err(trunc(format!(
            "program headers end at {ph_end}, file has {len} bytes"
        )));
    }
    let mut ph = vec![0u8; (phnum * phentsize) as usize];
    if !read_at(f, phoff, &mut ph).map_err(io)? {
        return Err(trunc("file ends inside the program headers".into()));
    }
    let mut end = 0u64;
    let mut loads = 0;
    for i in 0..phnum as usize {
        let p = &ph[i * 56..(i + 1) * 56];
        if le32(p, 0) != PT_LOAD {
            continue;
        }
        loads += 1;
        let (off, paddr, filesz, memsz) = (le64(p, 8), le64(p, 0x18), le64(p, 0x20), le64(p, 0x28));
        if off.checked_add(filesz).is_none_or(|e| e > len) {
            return Err(trunc(format!(
                "segment {i} needs file bytes {off}..{}, file has {len}",
                off.saturating_add(filesz)
            )));
        }
        if paddr < HIMEM_START {
            return Err(not(format!("segment {i} loads at {paddr:#x}, below 1 MiB")));
        }
        let seg_end = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| not(format!("segment {i} address overflows")))?;
        end = end.max(seg_end);
    }
    if loads == 0 {
        return Err(not("ELF has no loadable segment".into()));
    }
    if end > low_ram_end(mem_size) {
        return Err(KernelError::MemTooSmall {
            mem_mib: mem_size >> 20,
            need_mib: mib_ceil(end),
            what: format!("kernel {} (segments up to {end:#x})", path.display()),
        });
    }
    Ok(end)
}

/// Check and load the kernel at `path` into `mem` (`mem_size` bytes of RAM).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    protocol: BootProtocol,
) -> Result<LoadedKernel, KernelError> {
    let (mut f, len, format) = detect_format(path)?;
    let load_err = |e: linux_loader::loader::Error| KernelError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match format {
        KernelFormat::BzImage => {
            if protocol == BootProtocol::Pvh {
                return Err(KernelError::Load {
                    path: path.to_path_buf(),
                    reason: "PVH boot needs an ELF vmlinux with a PVH note, not a bzImage".into(),
                });
            }
            let (_, need) = check_bzimage(&mut f, path, len, mem_size)?;
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                protocol: BootProtocol::Linux64,
                entry: r.kernel_load.0 + LINUX64_ENTRY_OFFSET,
                reserved_end: need.max(r.kernel_end),
                setup_header: r.setup_header,
            })
        }
        KernelFormat::Elf => {
            let end = check_elf(&mut f, path, len, mem_size)?;
            let r =
                Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let pvh = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
                _ => None,
            };
            let (protocol, entry) =
                match (protocol, pvh) {
                    (BootProtocol::Linux64, _) | (BootProtocol::Auto, None) => {
                        (BootProtocol::Linux64, r.kernel_load.0)
                    }
                    (_, Some(a)) => (BootProtocol::Pvh, a),
                    (BootProtocol::Pvh, None) => return Err(KernelError::Load {
                        path: path.to_path_buf(),
                        reason:
                            "PVH boot requested but the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note"
                                .into(),
                    }),
                };
            Ok(LoadedKernel {
                format,
                protocol,
                entry,
                reserved_end: end.max(r.kernel_end),
                setup_header: None,
            })
        }
    }
}

/// The kernel's version string: from a bzImage the string `kernel_version`
/// points to (boot.rst: at `kernel_version + 0x200`), from an ELF vmlinux the
/// `linux_banner` ("Linux version ..."). `None` if there is none.
pub fn kernel_version(path: &Path) -> std::io::Result<Option<String>> {
    let (mut f, len, format) = match detect_format(path) {
        Ok(x) => x,
        Err(KernelError::Io { source, .. }) => return Err(source),
        Err(_) => return Ok(None),
    };
    match format {
        KernelFormat::BzImage => {
            let Ok(hdr) = read_setup_header(&mut f, path) else {
                return Ok(None);
            };
            if hdr.kernel_version == 0 {
                return Ok(None);
            }
            let off = u64::from(hdr.kernel_version) + 0x200;
            if off >= len {
                return Ok(None);
            }
            let mut buf = vec![0u8; 256.min((len - off) as usize)];
            read_at(&mut f, off, &mut buf)?;
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()))
        }
        KernelFormat::Elf => {
            const NEEDLE: &[u8] = b"Linux version ";
            f.seek(SeekFrom::Start(0))?;
            let mut carry: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut chunk)?;
                if n == 0 {
                    return Ok(None);
                }
                carry.extend_from_slice(&chunk[..n]);
                if let Some(p) = carry.windows(NEEDLE.len()).position(|w| w == NEEDLE) {
                    let rest = &carry[p + NEEDLE.len()..];
                    let mut s: Vec<u8> = rest
                        .iter()
                        .take_while(|b| **b != 0 && **b != b'\n')
                        .copied()
                        .take(256)
                        .collect();
                    if s.len() == rest.len() && s.len() < 256 {
                        // Banner continues in the next chunk.
                        let n = f.read(&mut chunk)?;
                        s.extend(
                            chunk[..n]
                                .iter()
                                .take_while(|b| **b != 0 && **b != b'\n')
                                .take(256),
                        );
                    }
                    return Ok(Some(String::from_utf8_lossy(&s).into_owned()));
                }
                let keep = carry.len().saturating_sub(NEEDLE.len());
                carry.drain(..keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bz(version: u16, syssize: u32, file_len: usize, kver: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; file_len];
        v[0x1f1] = 3; // setup_sects
        v[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        v[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // kernel_version
        v[0x211] = LOADED_HIGH;
        v[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        v[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        v[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        v[0x260..0x264].copy_from_slice(&0x20_0000u32.to_le_bytes()); // init_size
        v[0x300..0x300 + kver.len()].copy_from_slice(kver);
        v
    }

    #[test]
    fn pref_address_near_the_top_is_refused_not_overflowed() {
        let d = tempfile::tempdir().unwrap();
        let mut v = bz(0x020f, 0x100, 0x2000 + 0x1000, b"6.12 test\0");
        v[0x258..0x260].copy_from_slice(&0xffff_ffff_ffff_f000u64.to_le_bytes());
        let p = write(d.path(), "top", &v);
        let (mut f, len, _) = detect_format(&p).unwrap();
        let e = check_bzimage(&mut f, &p, len, 64 << 20).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    /// Mutated setup headers (1 to 4 random bytes of 0x1f1..0x268, 3000 cases, fixed seed)
    /// through the whole loader: each is refused or loaded, none panics.
    #[test]
    fn mutated_bzimage_headers_never_panic() {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let d = tempfile::tempdir().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let base = bz(0x020f, 0x100, 0x2000 + 0x1000, b"6.12 test\0");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let p = d.path().join("k");
        for _ in 0..3000 {
            let mut v = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = 0x1f1 + (next() % (0x268 - 0x1f1)) as usize;
                v[at] = next() as u8;
            }
            std::fs::write(&p, &v).unwrap();
            let _ = load_kernel(&mem, &p, 64 << 20, BootProtocol::Auto);
        }
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    #[test]
    fn detects_and_rejects() {
        let d = tempfile::tempdir().unwrap();
        let junk = write(d.path(), "junk", b"#!/bin/sh\necho not a kernel\n");
        assert!(matches!(
            detect_format(&junk),
            Err(KernelError::NotAKernel { .. })
        ));
        let empty = write(d.path(), "empty", b"");
        assert!(matches!(
            detect_format(&empty),
            Err(KernelError::NotAKernel { .. })
        ));
        assert!(matches!(
            detect_format(&d.path().join("missing")),
            Err(KernelError::Io { .. })
        ));
        let good = write(
            d.path(),
            "bz",
            &bz(0x020f, 0x100, 4 * 512 + 0x1000, b"6.12.0 (x@y)"),
        );
        assert_eq!(detect_format(&good).unwrap().2, KernelFormat::BzImage);
        assert_eq!(
            kernel_version(&good).unwrap().as_deref(),
            Some("6.12.0 (x@y)")
        );
    }

    #[test]
    fn bzimage_checks() {
        let d = tempfile::tempdir().unwrap();
        let mem = 64u64 << 20;
        // syssize says 0x1000 paragraphs = 64 KiB but the file is 8 KiB.
        let p = write(d.path(), "t", &bz(0x020f, 0x1000, 8192, b""));
        let (mut f, len, _) = detect_format(&p).unwrap();
        assert!(matches!(
            check_bzimage(&mut f, &p, len, mem),
            Err(KernelError::Truncated { .. })
        ));
        let p = write(d.path(), "ok", &bz(0x020f, 0x100, 4 * 512 + 0x1000, b""));
        let (mut f, len, _) = detect_format(&p).unwrap();
        let (_, need) = check_bzimage(&mut f, &p, len, mem).unwrap();
        assert_eq!(need, 0x100_0000 + 0x20_0000);
        assert!(matches!(
            check_bzimage(&mut f, &p, len, 16 << 20),
            Err(KernelError::MemTooSmall { need_mib: 18, .. })
        ));
        let p = write(d.path(), "old", &bz(0x0201, 0x100, 4 * 512 + 0x1000, b""));
        let (mut f, len, _) = detect_format(&p).unwrap();
        assert!(check_bzimage(&mut f, &p, len, mem).is_ok());
        let mut b = bz(0x020f, 0x100, 4 * 512 + 0x1000, b"");
        b[0x236] = 0;
        let p = write(d.path(), "32", &b);
        let (mut f, len, _) = detect_format(&p).unwrap();
        assert!(matches!(
            check_bzimage(&mut f, &p, len, mem),
            Err(KernelError::NotAKernel { .. })
        ));
        // Truncated inside the header.
        let p = write(d.path(), "short", &bz(0x020f, 0x100, 4 * 512, b"")[..0x210]);
        let (mut f, len, _) = detect_format(&p).unwrap();
        assert!(matches!(
            check_bzimage(&mut f, &p, len, mem),
            Err(KernelError::Truncated { .. })
        ));
    }

    fn elf(paddr: u64, filesz: u64, memsz: u64, data_len: usize) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56 + data_len];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[6] = 1;
        v[16..18].copy_from_slice(&2u16.to_le_bytes());
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        v[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        v[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        v[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let p = &mut v[64..120];
        p[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        p[8..16].copy_from_slice(&120u64.to_le_bytes());
        p[0x10..0x18].copy_from_slice(&paddr.to_le_bytes());
        p[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
        p[0x20..0x28].copy_from_slice(&filesz.to_le_bytes());
        p[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
        v
    }

    #[test]
    fn elf_checks() {
        let d = tempfile::tempdir().unwrap();
        let mem = 64u64 << 20;
        let check = |name: &str, data: Vec<u8>, mem: u64| {
            let p = write(d.path(), name, &data);
            let (mut f, len, fmt) = detect_format(&p).unwrap();
            assert_eq!(fmt, KernelFormat::Elf);
            check_elf(&mut f, &p, len, mem)
        };
        assert_eq!(
            check("ok", elf(0x20_0000, 16, 0x1000, 16), mem).unwrap(),
            0x20_1000
        );
        assert!(matches!(
            check("trunc", elf(0x20_0000, 4096, 4096, 16), mem),
            Err(KernelError::Truncated { .. })
        ));
        assert!(matches!(
            check("low", elf(0x1000, 16, 16, 16), mem),
            Err(KernelError::NotAKernel { .. })
        ));
        assert!(matches!(
            check("big", elf(0x100_0000, 16, 0x800_0000, 16), mem),
            Err(KernelError::MemTooSmall { need_mib: 144, .. })
        ));
        let mut e = elf(0x20_0000, 16, 16, 16);
        e[18] = 3; // EM_386
        assert!(matches!(
            check("i386", e, mem),
            Err(KernelError::NotAKernel { .. })
        ));
        let e = elf(0x20_0000, 16, 16, 16);
        assert!(matches!(
            check("hdr", e[..100].to_vec(), mem),
            Err(KernelError::Truncated { .. })
        ));
    }

    #[test]
    fn elf_banner_version() {
        let d = tempfile::tempdir().unwrap();
        let mut e = elf(0x20_0000, 16, 16, 64);
        e.extend_from_slice(b"xxLinux version 6.7.0-pvm+ (me@host) #1 SMP\n\0");
        let p = write(d.path(), "v", &e);
        assert_eq!(
            kernel_version(&p).unwrap().as_deref(),
            Some("6.7.0-pvm+ (me@host) #1 SMP")
        );
        let p = write(d.path(), "nov", &elf(0x20_0000, 16, 16, 64));
        assert_eq!(kernel_version(&p).unwrap(), None);
    }
}
