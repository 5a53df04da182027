//! A unit's line table: gimli runs the line program (`LineRows`); the rows are kept as
//! sequences of (address, file, line), each row covering the addresses up to the next, and the
//! file table renders paths the way addr2line does.

use std::num::NonZeroU64;

use addr2line::gimli;

use super::lookup::{covering, max_ends, Lookup, Reader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) address: u64,
    pub(super) file: u64,
    /// 0: no line. Kept as 32 bits, as addr2line keeps it.
    pub(super) line: u32,
}

/// The rows `rows[first..last]` cover `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sequence {
    pub(super) start: u64,
    pub(super) end: u64,
    first: usize,
    last: usize,
}

/// Where [`Lines::find_row`] left off: how many sequences start at or before the last probe,
/// and the row of the last of them.
#[derive(Clone, Copy, Default)]
pub(super) struct LineCursor {
    below: usize,
    row: usize,
}

/// Buffers of a [`Lines`], to reuse for the next unit.
#[derive(Default)]
pub(super) struct LineBuffers {
    sequences: Vec<Sequence>,
    rows: Vec<Row>,
    max_end: Vec<u64>,
}

pub(super) struct Lines<'a> {
    buffers: LineBuffers,
    /// Each sequence's rows strictly ascend (line programs make them so: rows at the same
    /// address are merged, the last one standing).
    rows_ascend: bool,
    /// The program, run: its header holds the file table (with any files the program added).
    program: gimli::LineRows<Reader<'a>, gimli::IncompleteLineProgram<Reader<'a>>, usize>,
    /// Entries of the file table (index 0 included, present or not).
    files: u64,
}

impl<'a> Lines<'a> {
    /// Runs `program` of `unit`, reusing `buffers`. Fails where a row cannot be read or a file
    /// name cannot be (addr2line renders them all up front).
    pub(super) fn parse(
        unit: gimli::UnitRef<'_, Reader<'a>>,
        program: gimli::IncompleteLineProgram<Reader<'a>>,
        mut buffers: LineBuffers,
    ) -> Result<Self, gimli::Error> {
        let LineBuffers {
            sequences,
            rows,
            max_end,
        } = &mut buffers;
        sequences.clear();
        rows.clear();
        let mut program = program.rows();
        // Start of the current sequence's rows.
        let mut first = 0;
        while let Some((_, row)) = program.next_row()? {
            let address = row.address();
            if row.end_sequence() {
                match rows.get(first) {
                    Some(start) if start.address < address => {
                        sequences.push(Sequence {
                            start: start.address,
                            end: address,
                            first,
                            last: rows.len(),
                        });
                        first = rows.len();
                    }
                    _ => rows.truncate(first),
                }
                continue;
            }
            let file = row.file_index();
            let line = row.line().map_or(0, NonZeroU64::get) as u32;
            match rows[first..].last_mut() {
                Some(last) if last.address == address => (last.file, last.line) = (file, line),
                _ => rows.push(Row {
                    address,
                    file,
                    line,
                }),
            }
        }
        // An unfinished sequence has no end: it covers nothing.
        rows.truncate(first);
        sequences.sort_unstable_by_key(|s| s.start);
        max_ends(sequences.iter().map(range), max_end);
        let rows_ascend = sequences.iter().all(|s| {
            rows[s.first..s.last]
                .windows(2)
                .all(|w| w[0].address < w[1].address)
        });

        // Index 0 counts even when absent (DWARF 4 without a unit name): its path is empty.
        let header = program.header();
        if let Some(file) = header.file(0) {
            check_file(unit, file, header)?;
        }
        let mut files = 1;
        while let Some(file) = header.file(files) {
            check_file(unit, file, header)?;
            files += 1;
        }
        Ok(Lines {
            buffers,
            rows_ascend,
            program,
            files,
        })
    }

    pub(super) fn into_buffers(self) -> LineBuffers {
        self.buffers
    }

    /// The address ranges of the sequences.
    pub(super) fn ranges(&self) -> impl Iterator<Item = gimli::Range> + '_ {
        self.buffers.sequences.iter().map(range)
    }

    /// The row covering `probe`. `cursor` carries from one probe to the next, which must
    /// ascend (start at the default).
    pub(super) fn find_row(&self, probe: u64, cursor: &mut LineCursor) -> Lookup<Row> {
        let b = &self.buffers;
        while b
            .sequences
            .get(cursor.below)
            .is_some_and(|s| s.start <= probe)
        {
            cursor.below += 1;
            cursor.row = 0;
        }
        let s = match covering(&b.sequences, &b.max_end, cursor.below, probe, range) {
            Lookup::Found(s) => b.sequences[s],
            Lookup::Missing => return Lookup::Missing,
            Lookup::Undecided => return Lookup::Undecided,
        };
        if !self.rows_ascend {
            return Lookup::Undecided;
        }
        // The last row at or before `probe` (the sequence starts at its first row).
        let rows = &b.rows[s.first..s.last];
        while rows.get(cursor.row + 1).is_some_and(|r| r.address <= probe) {
            cursor.row += 1;
        }
        Lookup::Found(rows[cursor.row])
    }

    /// The path of file `index` (comp_dir, include directory, name joined); `None` past the
    /// table, empty for a missing index 0.
    pub(super) fn file(
        &self,
        unit: gimli::UnitRef<'_, Reader<'a>>,
        index: u64,
    ) -> Option<Result<String, gimli::Error>> {
        if index >= self.files {
            return None;
        }
        let header = self.program.header();
        Some(match header.file(index) {
            Some(file) => render_file(unit, file, header),
            None => Ok(String::new()),
        })
    }
}

fn range(s: &Sequence) -> gimli::Range {
    gimli::Range {
        begin: s.start,
        end: s.end,
    }
}

/// Whether [`render_file`] would succeed, without building the path.
fn check_file<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    file: &gimli::FileEntry<Reader<'a>>,
    header: &gimli::LineProgramHeader<Reader<'a>>,
) -> Result<(), gimli::Error> {
    if file.directory_index() != 0 {
        if let Some(dir) = file.directory(header) {
            unit.attr_string(dir)?;
        }
    }
    unit.attr_string(file.path_name()).map(drop)
}

/// The path of `file`: the unit's `comp_dir`, then the file's directory (unless it is entry 0,
/// the compilation directory itself), then its name, each absolute part replacing what came
/// before.
pub(super) fn render_file<'a>(
    unit: gimli::UnitRef<'_, Reader<'a>>,
    file: &gimli::FileEntry<Reader<'a>>,
    header: &gimli::LineProgramHeader<Reader<'a>>,
) -> Result<String, gimli::Error> {
    let mut path = unit
        .comp_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    if file.directory_index() != 0 {
        if let Some(dir) = file.directory(header) {
            join(&mut path, &unit.attr_string(dir)?.to_string_lossy());
        }
    }
    join(
        &mut path,
        &unit.attr_string(file.path_name())?.to_string_lossy(),
    );
    Ok(path)
}

/// Appends `part` to `path` with the separator `path` uses, or replaces `path` when `part` is
/// absolute (Unix or Windows style, drive letters included).
fn join(path: &mut String, part: &str) {
    let rooted = |p: &str, sep: char| {
        p.starts_with(sep)
            || p.get(1..3)
                .is_some_and(|d| d.starts_with(':') && d.ends_with(sep))
    };
    if rooted(part, '/') || rooted(part, '\\') {
        *path = part.to_string();
        return;
    }
    let sep = if rooted(path, '\\') { '\\' } else { '/' };
    if !path.is_empty() && !path.ends_with(sep) {
        path.push(sep);
    }
    path.push_str(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        let joined = |base: &str, part: &str| {
            let mut p = base.to_string();
            join(&mut p, part);
            p
        };
        assert_eq!(joined("/build", "include/x.h"), "/build/include/x.h");
        assert_eq!(joined("/build/", "x.c"), "/build/x.c");
        assert_eq!(joined("/build", "/src/x.c"), "/src/x.c");
        assert_eq!(joined("", "x.c"), "x.c");
        assert_eq!(joined("C:\\b", "x.c"), "C:\\b\\x.c");
        assert_eq!(joined("/b", "C:/x.c"), "C:/x.c");
        assert_eq!(joined("/b", "\\x.c"), "\\x.c");
    }
}
