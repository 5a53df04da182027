//! Where functions are declared (`DW_AT_decl_file`/`DW_AT_decl_line` of their subprogram DIEs),
//! for the few source files a report shows: lcov's `FN:` line is the declaration, which no
//! instrumented site is on.
//!
//! Only the compilation units whose primary file is one of the asked files are read, so a
//! report of `drivers/vhost/*` reads four units, not the whole image.

use std::collections::{BTreeSet, HashMap};

use addr2line::gimli;

use super::dwarf::{load_dwarf, normalize_path};
use super::line::render_file;
use super::unit::Reader;
use super::vmlinux::Vmlinux;
use super::Error;

/// `(file, function name)` → declaration line, file paths normalised like frames'.
pub type DeclLines = HashMap<(String, String), u32>;

/// The declaration lines of the functions defined in the units of `files` (paths as in frames,
/// normalised against `src_roots`). A function declared in a header that such a unit includes
/// is found too, keyed by the header's path.
pub fn decl_lines(
    vmlinux: &Vmlinux,
    src_roots: &[String],
    files: &BTreeSet<&str>,
) -> Result<DeclLines, Error> {
    let dwarf = load_dwarf(vmlinux);
    let err = |source| Error::Dwarf {
        path: vmlinux.path().to_path_buf(),
        addr: None,
        source,
    };
    let mut out = DeclLines::new();
    let mut headers = dwarf.units();
    while let Some(header) = headers.next().map_err(err)? {
        let unit = dwarf.unit(header).map_err(err)?;
        let unit = gimli::UnitRef::new(&dwarf, &unit);
        let Some(name) = unit.name else { continue };
        let mut primary = match unit.comp_dir {
            Some(d) if !name.starts_with(b"/") => {
                format!("{}/{}", d.to_string_lossy(), name.to_string_lossy())
            }
            _ => name.to_string_lossy().into_owned(),
        };
        primary = normalize_path(&primary, src_roots);
        if !files.contains(primary.as_str()) {
            continue;
        }
        read_unit(unit, src_roots, &mut out).map_err(err)?;
    }
    Ok(out)
}

fn read_unit(
    unit: gimli::UnitRef<'_, Reader<'_>>,
    src_roots: &[String],
    out: &mut DeclLines,
) -> Result<(), gimli::Error> {
    let Some(program) = &unit.line_program else {
        return Ok(());
    };
    let header = program.header();
    let mut paths: HashMap<u64, Option<String>> = HashMap::new();
    let mut entries = unit.entries();
    while let Some(entry) = entries.next_dfs()? {
        if entry.tag() != gimli::DW_TAG_subprogram {
            continue;
        }
        // A prototype is not the definition (a forward declaration of a static function
        // comes first in the unit); the definition names it through DW_AT_specification
        // when its own DIE has no name.
        if let Some(gimli::AttributeValue::Flag(true)) = entry.attr_value(gimli::DW_AT_declaration)
        {
            continue;
        }
        let (Some(line), Some(file)) = (
            entry.attr_value(gimli::DW_AT_decl_line),
            entry.attr_value(gimli::DW_AT_decl_file),
        ) else {
            continue;
        };
        let name = match entry.attr_value(gimli::DW_AT_name) {
            Some(name) => Some(name),
            None => match entry.attr_value(gimli::DW_AT_specification) {
                Some(gimli::AttributeValue::UnitRef(o)) => unit
                    .entry(o)
                    .ok()
                    .and_then(|e| e.attr_value(gimli::DW_AT_name)),
                _ => None,
            },
        };
        let (Some(line), Some(Ok(name))) = (line.udata_value(), name.map(|n| unit.attr_string(n)))
        else {
            continue;
        };
        let gimli::AttributeValue::FileIndex(index) = file else {
            continue;
        };
        let path = paths.entry(index).or_insert_with(|| {
            let f = header.file(index)?;
            render_file(unit, f, header)
                .ok()
                .map(|p| normalize_path(&p, src_roots))
        });
        let (Some(path), Ok(line)) = (path.clone(), u32::try_from(line)) else {
            continue;
        };
        out.entry((path, name.to_string_lossy().into_owned()))
            .or_insert(line);
    }
    Ok(())
}
