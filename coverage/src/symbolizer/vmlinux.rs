//! Stage 0: the kernel image. Reads a `vmlinux` once with the `object` crate and keeps what the
//! later stages need as plain data: build-id, executable sections, the function symbol table and
//! (borrowed or decompressed) DWARF sections.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use addr2line::gimli;
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

use super::Error;

/// A GNU build-id (`.note.gnu.build-id`), the key of the symbol cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(pub Vec<u8>);

impl BuildId {
    /// Lower-case hex, as `readelf -n` prints it.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One function symbol (`STT_FUNC` defined in a section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionSymbol {
    /// Start address.
    pub addr: u64,
    /// `st_size`; 0 for assembly labels without `.size`.
    pub size: u64,
    /// Symbol name.
    pub name: String,
    /// True for `STB_GLOBAL`/`STB_WEAK`.
    pub global: bool,
}

impl FunctionSymbol {
    /// `addr..addr + size`.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr.saturating_add(self.size)
    }
}

/// Function symbols sorted by address (aliases at one address collapsed to one entry, preferring
/// the largest size, then a global name). The fallback for PC → function when DWARF has nothing.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    functions: Vec<FunctionSymbol>,
}

impl SymbolTable {
    /// Builds a table from unsorted symbols.
    pub fn new(mut functions: Vec<FunctionSymbol>) -> Self {
        functions.sort_by(|a, b| {
            a.addr
                .cmp(&b.addr)
                .then(b.size.cmp(&a.size))
                .then(b.global.cmp(&a.global))
                .then(a.name.cmp(&b.name))
        });
        functions.dedup_by(|later, first| later.addr == first.addr);
        SymbolTable { functions }
    }

    /// All functions, sorted by address.
    pub fn functions(&self) -> &[FunctionSymbol] {
        &self.functions
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// True when there are no function symbols.
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// The function whose `[addr, addr + size)` contains `addr`. A symbol without size matches
    /// only its own start address.
    pub fn lookup(&self, addr: u64) -> Option<&FunctionSymbol> {
        let idx = self.functions.partition_point(|f| f.addr <= addr);
        // Nested symbols are rare; look back a few entries for one whose range still covers addr.
        self.functions[..idx]
            .iter()
            .rev()
            .take(4)
            .find(|f| f.range().contains(&addr) || f.addr == addr)
    }

    /// First function with this exact name (linear scan: for tests and tools, not hot paths).
    pub fn by_name(&self, name: &str) -> Option<&FunctionSymbol> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// An executable section (`SHF_EXECINSTR`) with its place in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSection {
    /// Section name, e.g. `.text`, `.init.text`.
    pub name: String,
    /// Virtual address.
    pub addr: u64,
    /// Byte range in the file.
    pub file_range: Range<usize>,
}

impl ExecSection {
    /// Virtual address range.
    pub fn addr_range(&self) -> Range<u64> {
        self.addr..self.addr + self.file_range.len() as u64
    }
}

/// Where one DWARF section's bytes live.
#[derive(Debug, Default)]
pub(crate) enum SectionBytes {
    /// Section absent.
    #[default]
    Empty,
    /// Uncompressed: a range of the file.
    File(Range<usize>),
    /// `SHF_COMPRESSED`: decompressed at open.
    Owned(Vec<u8>),
}

/// What [`Vmlinux::read_notes`] reads of an image without reading all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNotes {
    /// Its GNU build-id.
    pub build_id: Option<BuildId>,
    /// Both `.debug_line` and `.debug_info` are present and non-empty.
    pub has_dwarf: bool,
}

/// Both `.debug_line` and `.debug_info` present and non-empty: what symbolizing to file:line
/// needs.
fn dwarf_present<'d, R: object::ReadRef<'d>>(file: &object::File<'d, R>) -> bool {
    [".debug_line", ".debug_info"].iter().all(|name| {
        file.section_by_name(name)
            .and_then(|s| s.file_range())
            .is_some_and(|(_, len)| len > 0)
    })
}

/// A kernel image opened for symbolization.
pub struct Vmlinux {
    path: PathBuf,
    data: Vec<u8>,
    little_endian: bool,
    architecture: object::Architecture,
    build_id: Option<BuildId>,
    has_dwarf: bool,
    exec_sections: Vec<ExecSection>,
    symbols: SymbolTable,
    pub(crate) dwarf: gimli::DwarfSections<SectionBytes>,
}

impl fmt::Debug for Vmlinux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmlinux")
            .field("path", &self.path)
            .field("size", &self.data.len())
            .field("build_id", &self.build_id)
            .field("has_dwarf", &self.has_dwarf)
            .field("functions", &self.symbols.len())
            .finish()
    }
}

impl Vmlinux {
    /// Reads and parses an ELF kernel image. Succeeds without DWARF (call sites need only code
    /// and symbols); [`Vmlinux::require_dwarf`] and the symbolizer give [`Error::NoDwarf`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let data = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(path, data)
    }

    /// Parses an image already in memory; `path` is only used in messages.
    pub fn parse(path: PathBuf, data: Vec<u8>) -> Result<Self, Error> {
        let parse_err = |source: object::Error| Error::Parse {
            path: path.clone(),
            source,
        };
        let file = object::File::parse(&*data).map_err(parse_err)?;
        let little_endian = file.is_little_endian();
        let architecture = file.architecture();
        let build_id = file
            .build_id()
            .map_err(parse_err)?
            .map(|b| BuildId(b.to_vec()));

        let mut exec_sections = Vec::new();
        for section in file.sections() {
            if section.kind() != SectionKind::Text {
                continue;
            }
            let Some((off, len)) = section.file_range() else {
                continue;
            };
            let (Ok(off), Ok(len)) = (usize::try_from(off), usize::try_from(len)) else {
                continue;
            };
            if off.checked_add(len).is_none_or(|end| end > data.len()) {
                continue;
            }
            exec_sections.push(ExecSection {
                name: section.name().unwrap_or("?").to_string(),
                addr: section.address(),
                file_range: off..off + len,
            });
        }
        exec_sections.sort_by_key(|s| s.addr);

        let mut functions = Vec::new();
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text || !sym.is_definition() {
                continue;
            }
            if sym.section_index().is_none() {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() {
                continue;
            }
            functions.push(FunctionSymbol {
                addr: sym.address(),
                size: sym.size(),
                name: name.to_string(),
                global: sym.is_global() || sym.is_weak(),
            });
        }
        let symbols = SymbolTable::new(functions);

        let dwarf = gimli::DwarfSections::load(|id| -> Result<SectionBytes, Error> {
            let Some(section) = file.section_by_name(id.name()) else {
                return Ok(SectionBytes::Empty);
            };
            let compressed = section.compressed_file_range().map_err(parse_err)?;
            if compressed.format == object::CompressionFormat::None {
                let Some((off, len)) = section.file_range() else {
                    return Ok(SectionBytes::Empty);
                };
                let (off, len) = (off as usize, len as usize);
                if off.checked_add(len).is_none_or(|end| end > data.len()) {
                    return Err(Error::Malformed {
                        path: path.clone(),
                        what: "a DWARF section lies outside the file",
                    });
                }
                Ok(SectionBytes::File(off..off + len))
            } else {
                let bytes = section.uncompressed_data().map_err(parse_err)?;
                Ok(SectionBytes::Owned(bytes.into_owned()))
            }
        })?;
        let has_dwarf = dwarf_present(&file);
        drop(file);

        Ok(Vmlinux {
            path,
            data,
            little_endian,
            architecture,
            build_id,
            has_dwarf,
            exec_sections,
            symbols,
            dwarf,
        })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw file bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// ELF machine.
    pub fn architecture(&self) -> object::Architecture {
        self.architecture
    }

    /// True for little-endian images.
    pub fn is_little_endian(&self) -> bool {
        self.little_endian
    }

    /// `.note.gnu.build-id`, if the image has one.
    pub fn build_id(&self) -> Option<&BuildId> {
        self.build_id.as_ref()
    }

    /// The build-id of the image at `path` and whether it has DWARF, reading only its headers
    /// and notes (not the whole file, as [`Vmlinux::open`] does): enough to name the kernel of
    /// a run, or to find its site table in the cache.
    pub fn read_notes(path: impl AsRef<Path>) -> Result<ImageNotes, Error> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = object::ReadCache::new(file);
        let parse_err = |source: object::Error| Error::Parse {
            path: path.to_path_buf(),
            source,
        };
        let elf = object::File::parse(&cache).map_err(parse_err)?;
        Ok(ImageNotes {
            build_id: elf
                .build_id()
                .map_err(parse_err)?
                .map(|b| BuildId(b.to_vec())),
            has_dwarf: dwarf_present(&elf),
        })
    }

    /// True when both `.debug_line` and `.debug_info` are present and non-empty.
    pub fn has_dwarf(&self) -> bool {
        self.has_dwarf
    }

    /// `Err(Error::NoDwarf)` when the image cannot be symbolized to file:line.
    pub fn require_dwarf(&self) -> Result<(), Error> {
        if self.has_dwarf {
            Ok(())
        } else {
            Err(Error::NoDwarf {
                path: self.path.clone(),
            })
        }
    }

    /// Executable sections, sorted by address.
    pub fn exec_sections(&self) -> &[ExecSection] {
        &self.exec_sections
    }

    /// The function symbol table.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// Code bytes for `addr..addr + len` if they lie entirely inside one executable section.
    pub fn code(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let idx = self.exec_sections.partition_point(|s| s.addr <= addr);
        let section = self.exec_sections.get(idx.checked_sub(1)?)?;
        let end = addr.checked_add(len)?;
        if end > section.addr_range().end {
            return None;
        }
        let start = section.file_range.start + (addr - section.addr) as usize;
        self.data.get(start..start + len as usize)
    }

    pub(crate) fn section_bytes<'a>(&'a self, s: &'a SectionBytes) -> &'a [u8] {
        match s {
            SectionBytes::Empty => &[],
            SectionBytes::File(r) => &self.data[r.clone()],
            SectionBytes::Owned(v) => v,
        }
    }
}
