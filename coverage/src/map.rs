//! Stage 3: the data model reports are made from. Lines and functions with the instrumented sites
//! that belong to them and which of those were hit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::glob::{matches_any, PathGlob};
use crate::symbolizer::{Frame, PcMapping, SiteKind, SiteTable};

/// Which frames of a site a line or function gets credit for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Attribution {
    /// Every frame: the innermost location *and* each call line of the inlining chain, and every
    /// function of the chain (an inlined helper and each function it was inlined into). What
    /// gcov shows: the line that calls an inlined helper counts as executed.
    #[default]
    AllFrames,
    /// Only the innermost frame (where the instruction is in the source).
    Innermost,
}

/// How to build a [`CoverageMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapOptions {
    /// Site kind that counts: `Pc` for `KCOV_TRACE_PC` runs, `Cmp` for `KCOV_TRACE_CMP` runs.
    pub kind: SiteKind,
    /// Frame attribution.
    pub attribution: Attribution,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            kind: SiteKind::Pc,
            attribution: Attribution::AllFrames,
        }
    }
}

/// A source line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineKey {
    /// Normalised path (e.g. `drivers/vhost/net.c`).
    pub file: Arc<str>,
    /// 1-based line.
    pub line: u32,
}

/// A function; static functions of the same name in different files are different keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// File of its body (from the frames), `None` when only the symbol table knew it.
    pub file: Option<Arc<str>>,
    /// Name.
    pub name: Arc<str>,
}

/// Instrumented and hit sites (call addresses, sorted, unique).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteSet {
    /// All sites.
    pub sites: Vec<u64>,
    /// The hit ones (a subset of `sites`).
    pub hit: Vec<u64>,
}

impl SiteSet {
    /// Number of instrumented sites.
    pub fn instrumented(&self) -> usize {
        self.sites.len()
    }

    /// Number of hit sites.
    pub fn hit_count(&self) -> usize {
        self.hit.len()
    }

    /// True when at least one site was hit.
    pub fn is_hit(&self) -> bool {
        !self.hit.is_empty()
    }

    fn add(&mut self, site: u64, hit: bool) {
        // Sites are visited in address order, so pushing keeps both vectors sorted.
        if self.sites.last() != Some(&site) {
            self.sites.push(site);
            if hit {
                self.hit.push(site);
            }
        }
    }
}

/// A function's sites and the range of lines they were attributed to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionCoverage {
    /// Sites.
    pub sites: SiteSet,
    /// Smallest and largest line among its frames in its own file.
    pub lines: Option<(u32, u32)>,
    /// Each line of its own file that its frames name, and whether one of its sites there was hit.
    pub line_hits: BTreeMap<u32, bool>,
    /// The entry site of each of its instances (its out-of-line body, and each place it was
    /// inlined): the lowest-addressed site of the instance, i.e. its entry block, laid out
    /// first. Their hit counts summed are how often the function was entered.
    pub entries: Vec<u64>,
}

impl FunctionCoverage {
    /// Lines of its own file with sites.
    pub fn lines_total(&self) -> usize {
        self.line_hits.len()
    }

    /// Those lines with a hit site.
    pub fn lines_hit(&self) -> usize {
        self.line_hits.values().filter(|h| **h).count()
    }
}

/// Totals over a map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Instrumented lines.
    pub lines: usize,
    /// Lines with at least one hit site.
    pub lines_hit: usize,
    /// Functions with sites.
    pub functions: usize,
    /// Functions with at least one hit site.
    pub functions_hit: usize,
    /// Distinct sites.
    pub sites: usize,
    /// Distinct hit sites.
    pub sites_hit: usize,
}

/// Glob decisions per file, remembered by the file's `Arc` (paths are interned, so each file is
/// matched once). Without globs every frame is admitted; with globs, frames whose file matches.
struct FileFilter<'g> {
    globs: Option<&'g [PathGlob]>,
    seen: HashMap<*const u8, bool>,
}

impl<'g> FileFilter<'g> {
    fn new(globs: Option<&'g [PathGlob]>) -> Self {
        FileFilter {
            globs,
            seen: HashMap::new(),
        }
    }

    fn admits(&mut self, file: Option<&Arc<str>>) -> bool {
        let Some(globs) = self.globs else {
            return true;
        };
        let Some(file) = file else { return false };
        // The pointer is only a cache key; the Arc is alive in the table while we run.
        *self
            .seen
            .entry(Arc::as_ptr(file) as *const u8)
            .or_insert_with(|| matches_any(globs, file))
    }
}

/// Identifies an inlining chain (the frames above a function's own frame).
fn chain_hash(chain: &[Frame]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    chain.hash(&mut h);
    h.finish()
}

/// Coverage of every instrumented line and function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoverageMap {
    /// (file, line) → sites.
    pub lines: BTreeMap<LineKey, SiteSet>,
    /// (file, function) → sites.
    pub functions: BTreeMap<FunctionKey, FunctionCoverage>,
    /// Sites of the chosen kind that had no usable frame (no file:line): counted in
    /// [`Summary::sites`] only through functions, listed here for diagnostics.
    pub unattributed: SiteSet,
}

impl CoverageMap {
    /// Builds the map from every symbolized site and the set of hit call addresses.
    pub fn build(table: &SiteTable, hit: &dyn Fn(u64) -> bool, options: MapOptions) -> Self {
        Self::build_filtered(table, hit, options, None)
    }

    /// [`CoverageMap::build`] restricted to files matching `globs` (when given): the same as
    /// `build(..).filter(globs)`, without building the rest of the image's map.
    pub fn build_filtered(
        table: &SiteTable,
        hit: &dyn Fn(u64) -> bool,
        options: MapOptions,
        globs: Option<&[PathGlob]>,
    ) -> Self {
        let mut map = CoverageMap::default();
        let mut seen_lines: Vec<(&Arc<str>, u32)> = Vec::new();
        let mut seen_funcs: Vec<(Option<&Arc<str>>, &Arc<str>)> = Vec::new();
        let mut files = FileFilter::new(globs);
        // (function, instance) pairs met so far; an instance is told by the inlining chain
        // above the function's frame (empty for the out-of-line body).
        let mut instances: HashSet<(FunctionKey, u64)> = HashSet::new();
        for (site, all_frames) in table.sites.iter().zip(&table.frames) {
            if site.kind != options.kind {
                continue;
            }
            let frames: &[Frame] = match options.attribution {
                Attribution::AllFrames => all_frames,
                Attribution::Innermost => &all_frames[..all_frames.len().min(1)],
            };
            if globs.is_some() && !frames.iter().any(|f| files.admits(f.file.as_ref())) {
                continue;
            }
            let addr = site.call_addr;
            let is_hit = hit(addr);
            seen_lines.clear();
            seen_funcs.clear();
            for (k, f) in frames.iter().enumerate() {
                if !files.admits(f.file.as_ref()) {
                    continue;
                }
                if let (Some(file), Some(line)) = (&f.file, f.line) {
                    if !seen_lines.contains(&(file, line)) {
                        seen_lines.push((file, line));
                        map.lines
                            .entry(LineKey {
                                file: file.clone(),
                                line,
                            })
                            .or_default()
                            .add(addr, is_hit);
                    }
                }
                if let Some(name) = &f.function {
                    let key = (f.file.as_ref(), name);
                    if !seen_funcs.contains(&key) {
                        seen_funcs.push(key);
                        let fkey = FunctionKey {
                            file: f.file.clone(),
                            name: name.clone(),
                        };
                        let first =
                            instances.insert((fkey.clone(), chain_hash(&all_frames[k + 1..])));
                        let func = map.functions.entry(fkey).or_default();
                        if first {
                            func.entries.push(addr);
                        }
                        func.sites.add(addr, is_hit);
                        if let Some(l) = f.line {
                            *func.line_hits.entry(l).or_insert(false) |= is_hit;
                            func.lines = Some(match func.lines {
                                None => (l, l),
                                Some((lo, hi)) => (lo.min(l), hi.max(l)),
                            });
                        }
                    }
                }
            }
            if seen_lines.is_empty() && globs.is_none() {
                map.unattributed.add(addr, is_hit);
            }
        }
        map
    }

    /// [`CoverageMap::build`] with the sites a [`PcMapping`] hit.
    pub fn from_mapping(table: &SiteTable, mapping: &PcMapping, options: MapOptions) -> Self {
        Self::build(table, &|a| mapping.hits.contains_key(&a), options)
    }

    /// Maps raw kcov PCs and builds the map; also returns the mapping (for its `unmatched`).
    pub fn from_pcs(
        table: &SiteTable,
        pcs: impl IntoIterator<Item = u64>,
        options: MapOptions,
    ) -> (Self, PcMapping) {
        let mapping = table.map_pcs(pcs);
        (Self::from_mapping(table, &mapping, options), mapping)
    }

    /// Only lines and functions whose file matches one of `globs` (functions without a file and
    /// unattributed sites are dropped).
    pub fn filter(&self, globs: &[PathGlob]) -> Self {
        let mut files = FileFilter::new(Some(globs));
        let mut files2 = FileFilter::new(Some(globs));
        CoverageMap {
            lines: self
                .lines
                .iter()
                .filter(|(k, _)| files.admits(Some(&k.file)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            functions: self
                .functions
                .iter()
                .filter(|(k, _)| files2.admits(k.file.as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            unattributed: SiteSet::default(),
        }
    }

    /// Files with instrumented lines, sorted.
    pub fn files(&self) -> BTreeSet<Arc<str>> {
        self.lines.keys().map(|k| k.file.clone()).collect()
    }

    /// Lines of one file.
    pub fn file_lines<'a>(&'a self, file: &str) -> impl Iterator<Item = (u32, &'a SiteSet)> + 'a {
        let file: Arc<str> = Arc::from(file);
        let lo = LineKey {
            file: file.clone(),
            line: 0,
        };
        let hi = LineKey {
            file,
            line: u32::MAX,
        };
        self.lines.range(lo..=hi).map(|(k, v)| (k.line, v))
    }

    /// Totals. Sites are counted once even when several lines share them.
    pub fn summary(&self) -> Summary {
        let mut sites: HashSet<u64> = HashSet::new();
        let mut hit: HashSet<u64> = HashSet::new();
        let sets = self
            .lines
            .values()
            .chain(self.functions.values().map(|f| &f.sites))
            .chain(std::iter::once(&self.unattributed));
        for s in sets {
            sites.extend(&s.sites);
            hit.extend(&s.hit);
        }
        Summary {
            lines: self.lines.len(),
            lines_hit: self.lines.values().filter(|s| s.is_hit()).count(),
            functions: self.functions.len(),
            functions_hit: self.functions.values().filter(|f| f.sites.is_hit()).count(),
            sites: sites.len(),
            sites_hit: hit.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolizer::CallSite;

    fn frame(func: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: Some(Arc::from(func)),
            file: Some(Arc::from(file)),
            line: Some(line),
        }
    }

    /// A 5-byte hook call at `a`.
    fn site(a: u64, kind: SiteKind) -> CallSite {
        CallSite {
            call_addr: a,
            call_len: 5,
            ret_addr: a + 5,
            kind,
            tail: false,
        }
    }

    fn table() -> SiteTable {
        SiteTable {
            sites: vec![
                site(0x10, SiteKind::Pc),
                site(0x20, SiteKind::Pc),
                site(0x30, SiteKind::Cmp),
                site(0x40, SiteKind::Pc),
                site(0x50, SiteKind::Pc),
            ],
            frames: vec![
                vec![frame("handle_tx", "drivers/vhost/net.c", 100)],
                // An inlined helper from a header, called from net.c:101.
                vec![
                    frame("vhost_has_feature", "drivers/vhost/vhost.h", 7),
                    frame("handle_tx", "drivers/vhost/net.c", 101),
                ],
                vec![frame("handle_tx", "drivers/vhost/net.c", 100)],
                vec![frame("vhost_poll", "drivers/vhost/vhost.c", 50)],
                // Symbol-table fallback only.
                vec![Frame {
                    function: Some(Arc::from("asm_thing")),
                    file: None,
                    line: None,
                }],
            ],
            ..SiteTable::default()
        }
    }

    #[test]
    fn build_and_filter() {
        let t = table();
        // Raw PCs: return addresses; 0x35 is the cmp site (ignored in Pc mode), 0x999 unmatched.
        let (map, mapping) =
            CoverageMap::from_pcs(&t, [0x25, 0x25, 0x35, 0x999], MapOptions::default());
        assert_eq!(
            mapping.unmatched.keys().copied().collect::<Vec<_>>(),
            [0x999]
        );
        let line = |f: &str, l| {
            map.lines[&LineKey {
                file: Arc::from(f),
                line: l,
            }]
                .clone()
        };
        assert_eq!(
            line("drivers/vhost/net.c", 100),
            SiteSet {
                sites: vec![0x10],
                hit: vec![]
            }
        );
        assert_eq!(line("drivers/vhost/net.c", 101).hit, vec![0x20]);
        assert_eq!(line("drivers/vhost/vhost.h", 7).hit, vec![0x20]);
        let handle_tx = &map.functions[&FunctionKey {
            file: Some(Arc::from("drivers/vhost/net.c")),
            name: Arc::from("handle_tx"),
        }];
        assert_eq!(handle_tx.sites.sites, vec![0x10, 0x20]);
        assert_eq!(handle_tx.sites.hit, vec![0x20]);
        assert_eq!(handle_tx.lines, Some((100, 101)));
        assert_eq!(
            handle_tx.line_hits,
            BTreeMap::from([(100, false), (101, true)])
        );
        assert_eq!((handle_tx.lines_total(), handle_tx.lines_hit()), (2, 1));
        assert_eq!(map.unattributed.sites, vec![0x50]);
        assert_eq!(
            map.summary(),
            Summary {
                lines: 4,
                lines_hit: 2,
                functions: 4,
                functions_hit: 2,
                sites: 4,
                sites_hit: 1,
            }
        );

        let net = map.filter(&[PathGlob::new("drivers/vhost/*.c")]);
        let built = CoverageMap::build_filtered(
            &t,
            &|a| mapping.hits.contains_key(&a),
            MapOptions::default(),
            Some(&[PathGlob::new("drivers/vhost/*.c")]),
        );
        assert_eq!(built, net);
        assert_eq!(
            net.files().into_iter().collect::<Vec<_>>(),
            vec![
                Arc::from("drivers/vhost/net.c"),
                Arc::from("drivers/vhost/vhost.c")
            ]
        );
        assert_eq!(net.file_lines("drivers/vhost/net.c").count(), 2);
        assert_eq!(net.summary().functions, 2);

        let inner = CoverageMap::from_mapping(
            &t,
            &mapping,
            MapOptions {
                attribution: Attribution::Innermost,
                ..MapOptions::default()
            },
        );
        assert!(!inner.lines.contains_key(&LineKey {
            file: Arc::from("drivers/vhost/net.c"),
            line: 101
        }));

        let cmp = CoverageMap::from_mapping(
            &t,
            &mapping,
            MapOptions {
                kind: SiteKind::Cmp,
                ..MapOptions::default()
            },
        );
        assert_eq!(cmp.summary().sites, 1);
        assert_eq!(cmp.summary().sites_hit, 1);
    }

    #[test]
    fn entries_are_the_first_site_of_each_instance() {
        let f = |func: &str, line| frame(func, "drivers/vhost/net.c", line);
        // handle_tx (out of line, lines 10-12) inlines helper twice (call lines 11 and 12);
        // helper's own body is lines 3-4.
        let t = SiteTable {
            sites: [0x10, 0x20, 0x30, 0x40, 0x50, 0x60]
                .into_iter()
                .map(|a| site(a, SiteKind::Pc))
                .collect(),
            frames: vec![
                vec![f("handle_tx", 10)],
                vec![f("helper", 3), f("handle_tx", 11)],
                vec![f("helper", 4), f("handle_tx", 11)],
                vec![f("helper", 3), f("handle_tx", 12)],
                vec![f("helper", 4), f("handle_tx", 12)],
                vec![f("handle_tx", 12)],
            ],
            ..SiteTable::default()
        };
        let map = CoverageMap::build(&t, &|_| true, MapOptions::default());
        let get = |name: &str| {
            map.functions
                .iter()
                .find(|(k, _)| &*k.name == name)
                .map(|(_, v)| v.entries.clone())
                .unwrap()
        };
        assert_eq!(get("handle_tx"), vec![0x10]);
        assert_eq!(get("helper"), vec![0x20, 0x40]);
        // Innermost attribution tells instances apart the same way.
        let inner = CoverageMap::build(
            &t,
            &|_| true,
            MapOptions {
                attribution: Attribution::Innermost,
                ..MapOptions::default()
            },
        );
        let helper = inner
            .functions
            .iter()
            .find(|(k, _)| &*k.name == "helper")
            .unwrap()
            .1;
        assert_eq!(helper.entries, vec![0x20, 0x40]);
    }
}
