//! Comparing coverage: two runs (functions and lines gained or lost), and a patch (which added
//! or changed lines of a unified diff are instrumented, hit, missed).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::report::Report;

/// A line, `file:line`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Line {
    /// Path.
    pub file: String,
    /// 1-based line.
    pub line: u32,
}

/// A function, `file:name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Function {
    /// Path.
    pub file: String,
    /// Name.
    pub name: String,
}

fn hit_sets(r: &Report) -> (BTreeSet<Function>, BTreeSet<Line>) {
    let mut funcs = BTreeSet::new();
    let mut lines = BTreeSet::new();
    for f in &r.files {
        for g in f.functions.iter().filter(|g| g.sites_hit > 0) {
            funcs.insert(Function {
                file: f.path.clone(),
                name: g.name.clone(),
            });
        }
        for l in f.lines.iter().filter(|l| l.sites_hit > 0) {
            lines.insert(Line {
                file: f.path.clone(),
                line: l.line,
            });
        }
    }
    (funcs, lines)
}

/// What run B covers that run A does not, and the reverse.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoverageDiff {
    /// Hit in B, not in A.
    pub functions_gained: Vec<Function>,
    /// Hit in A, not in B.
    pub functions_lost: Vec<Function>,
    /// Hit in B, not in A.
    pub lines_gained: Vec<Line>,
    /// Hit in A, not in B.
    pub lines_lost: Vec<Line>,
    /// Lines hit in both.
    pub lines_common: usize,
}

impl CoverageDiff {
    /// Compares two reports (made with the same filter).
    pub fn new(a: &Report, b: &Report) -> Self {
        let (fa, la) = hit_sets(a);
        let (fb, lb) = hit_sets(b);
        CoverageDiff {
            functions_gained: fb.difference(&fa).cloned().collect(),
            functions_lost: fa.difference(&fb).cloned().collect(),
            lines_gained: lb.difference(&la).cloned().collect(),
            lines_lost: la.difference(&lb).cloned().collect(),
            lines_common: la.intersection(&lb).count(),
        }
    }

    /// True when both cover the same.
    pub fn is_empty(&self) -> bool {
        self.functions_gained.is_empty()
            && self.functions_lost.is_empty()
            && self.lines_gained.is_empty()
            && self.lines_lost.is_empty()
    }

    /// Readable text: `+` gained, `-` lost; lines grouped per file as ranges.
    pub fn text(&self, a: &str, b: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "coverage diff: A = {a}\n               B = {b}");
        let _ = writeln!(
            s,
            "functions: {} gained, {} lost; lines: {} gained, {} lost, {} in both",
            self.functions_gained.len(),
            self.functions_lost.len(),
            self.lines_gained.len(),
            self.lines_lost.len(),
            self.lines_common
        );
        for f in &self.functions_gained {
            let _ = writeln!(s, "+ function {} {}", f.file, f.name);
        }
        for f in &self.functions_lost {
            let _ = writeln!(s, "- function {} {}", f.file, f.name);
        }
        for (sign, lines) in [("+", &self.lines_gained), ("-", &self.lines_lost)] {
            for (file, ranges) in group_ranges(lines) {
                let _ = writeln!(s, "{sign} lines {file}: {ranges}");
            }
        }
        s
    }
}

/// `file → "3-5, 9"`.
fn group_ranges(lines: &[Line]) -> BTreeMap<&str, String> {
    let mut per: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for l in lines {
        per.entry(&l.file).or_default().push(l.line);
    }
    per.into_iter()
        .map(|(f, mut ls)| {
            ls.sort_unstable();
            (f, ranges(&ls))
        })
        .collect()
}

/// Sorted numbers as `1-3, 7`.
pub fn ranges(ls: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ls.len() {
        let mut j = i;
        while j + 1 < ls.len() && ls[j + 1] == ls[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ls[i].to_string()
        } else {
            format!("{}-{}", ls[i], ls[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// A unified diff that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("diff line {line}: {what}; expected a unified diff such as `git diff base..topic -- drivers/vhost`")]
pub struct PatchError {
    /// 1-based line of the diff.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// The lines a patch adds or changes, per file of the new tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchLines {
    /// New-tree path → added/changed line numbers (sorted, unique).
    pub files: BTreeMap<String, Vec<u32>>,
}

fn parse_range(s: &str) -> Option<(u32, u32)> {
    let (start, len) = match s.split_once(',') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => (s.parse().ok()?, 1),
    };
    Some((start, len))
}

/// `@@ -a[,b] +c[,d] @@ ...` → ((a, b), (c, d)).
fn parse_hunk_header(l: &str) -> Option<((u32, u32), (u32, u32))> {
    let rest = l.strip_prefix("@@ ")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(' ')?;
    Some((
        parse_range(old.strip_prefix('-')?)?,
        parse_range(new.strip_prefix('+')?)?,
    ))
}

fn new_path(header: &str) -> Option<String> {
    let p = header.split('\t').next().unwrap_or(header).trim_end();
    if p == "/dev/null" {
        return None;
    }
    let p = p.strip_prefix("b/").unwrap_or(p);
    Some(p.strip_prefix("./").unwrap_or(p).to_string())
}

impl PatchLines {
    /// Parses a unified diff (`git diff`, `git format-patch`, `diff -u`). Text before the first
    /// file header is ignored (commit message); after it, every line must belong to the diff.
    pub fn parse(text: &str) -> Result<Self, PatchError> {
        let lines: Vec<&str> = text.lines().collect();
        let err = |i: usize, what: String| PatchError { line: i + 1, what };
        let mut files: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let mut current: Option<Option<String>> = None; // Some(None) = deleted file
        let mut seen_header = false;
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            if l.starts_with("--- ") && lines.get(i + 1).is_some_and(|n| n.starts_with("+++ ")) {
                let new = &lines[i + 1][4..];
                current = Some(new_path(new));
                seen_header = true;
                i += 2;
                continue;
            }
            if l.starts_with("diff ") {
                seen_header = true;
                current = None;
                i += 1;
                continue;
            }
            if !seen_header {
                i += 1;
                continue;
            }
            if l.starts_with("@@") {
                let Some((_old, (start, len))) = parse_hunk_header(l) else {
                    return Err(err(i, format!("malformed hunk header {l:?}")));
                };
                let Some(file) = &current else {
                    return Err(err(i, "hunk before a ---/+++ file header".into()));
                };
                let (old_len, new_len) = (_old.1, len);
                let (mut old_left, mut new_left) = (old_len, new_len);
                let mut n = start;
                let hunk_line = i;
                i += 1;
                while old_left > 0 || new_left > 0 {
                    let Some(&h) = lines.get(i) else {
                        return Err(err(
                            hunk_line,
                            format!("hunk ends early: {old_left} old and {new_left} new lines missing at the end of the diff"),
                        ));
                    };
                    match h.as_bytes().first() {
                        Some(b'+') if new_left > 0 => {
                            if let Some(f) = file {
                                files.entry(f.clone()).or_default().insert(n);
                            }
                            n = n.saturating_add(1);
                            new_left -= 1;
                        }
                        Some(b'-') if old_left > 0 => old_left -= 1,
                        Some(b' ') | None if old_left > 0 && new_left > 0 => {
                            n = n.saturating_add(1);
                            old_left -= 1;
                            new_left -= 1;
                        }
                        Some(b'\\') => {}
                        _ => {
                            return Err(err(
                                i,
                                format!(
                                    "line {h:?} does not fit the hunk at line {} \
                                     ({old_left} old and {new_left} new lines expected)",
                                    hunk_line + 1
                                ),
                            ))
                        }
                    }
                    i += 1;
                }
                continue;
            }
            if l == "-- " {
                // format-patch signature: the end.
                break;
            }
            if l.starts_with('+') || l.starts_with('-') || l.starts_with(' ') {
                return Err(err(i, format!("{l:?} is outside any hunk")));
            }
            // Extended headers (index, mode, rename, Binary files ...), blank lines.
            i += 1;
        }
        if !seen_header {
            return Err(err(
                0,
                "no file header (`--- a/...` / `+++ b/...` or `diff --git`) found".into(),
            ));
        }
        Ok(PatchLines {
            files: files
                .into_iter()
                .map(|(f, s)| (f, s.into_iter().collect()))
                .collect(),
        })
    }
}

/// Coverage of one file's added lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PatchFile {
    /// Path (as the kernel's debug info names it when the patch path matched one after
    /// dropping leading components, like `patch -p`).
    pub path: String,
    /// The file is not in the kernel's debug info (no line of it can be instrumented).
    pub unknown: bool,
    /// Added or changed lines.
    pub changed: Vec<u32>,
    /// Those with instrumented sites.
    pub instrumented: Vec<u32>,
    /// Instrumented and hit.
    pub hit: Vec<u32>,
    /// Instrumented, not hit.
    pub missed: Vec<u32>,
}

/// Patch coverage: of the added/changed lines, which are instrumented, hit, missed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PatchCoverage {
    /// Files of the patch.
    pub files: Vec<PatchFile>,
    /// Changed lines.
    pub changed: usize,
    /// Instrumented changed lines.
    pub instrumented: usize,
    /// Hit changed lines.
    pub hit: usize,
}

/// The report file a patch path names: the path itself, else the path with leading components
/// dropped one at a time (`patch -p1`, `-p2`, ...: `new/drivers/vhost/net.c` of a plain
/// `diff -u old/ new/` is `drivers/vhost/net.c`).
fn find_file<'r>(report: &'r Report, path: &str) -> Option<&'r crate::report::FileReport> {
    let mut p = path;
    loop {
        if let Some(f) = report.files.iter().find(|f| f.path == p) {
            return Some(f);
        }
        p = p.split_once('/')?.1;
    }
}

impl PatchCoverage {
    /// Classifies `patch` against `report` (use a report whose filter covers the patched files).
    pub fn new(patch: &PatchLines, report: &Report) -> Self {
        let mut out = PatchCoverage::default();
        for (path, changed) in &patch.files {
            let fr = find_file(report, path);
            let mut pf = PatchFile {
                path: fr.map(|f| f.path.clone()).unwrap_or_else(|| path.clone()),
                unknown: fr.is_none(),
                changed: changed.clone(),
                ..PatchFile::default()
            };
            for &n in changed {
                let l = fr.and_then(|f| {
                    f.lines
                        .binary_search_by_key(&n, |l| l.line)
                        .ok()
                        .map(|i| &f.lines[i])
                });
                if let Some(l) = l {
                    pf.instrumented.push(n);
                    if l.sites_hit > 0 {
                        pf.hit.push(n);
                    } else {
                        pf.missed.push(n);
                    }
                }
            }
            out.changed += pf.changed.len();
            out.instrumented += pf.instrumented.len();
            out.hit += pf.hit.len();
            out.files.push(pf);
        }
        out
    }

    /// Readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "patch coverage: {} changed lines, {} instrumented, {} hit, {} missed{}",
            self.changed,
            self.instrumented,
            self.hit,
            self.instrumented - self.hit,
            if self.instrumented > 0 {
                format!(
                    " ({:.1}% of instrumented)",
                    100.0 * self.hit as f64 / self.instrumented as f64
                )
            } else {
                String::new()
            }
        );
        if !self.files.is_empty() && self.files.iter().all(|f| f.unknown) {
            let _ = writeln!(
                s,
                "WARNING: no file of the patch is in the kernel's debug info (is it a patch of \
                 this kernel's tree, with paths relative to its top?)"
            );
        }
        for f in &self.files {
            let _ = writeln!(
                s,
                "  {}: {} changed, {} instrumented, {} hit{}",
                f.path,
                f.changed.len(),
                f.instrumented.len(),
                f.hit.len(),
                if f.unknown {
                    " (not in the kernel's debug info)"
                } else {
                    ""
                }
            );
            if !f.hit.is_empty() {
                let _ = writeln!(s, "    hit:    {}", ranges(&f.hit));
            }
            if !f.missed.is_empty() {
                let _ = writeln!(s, "    missed: {}", ranges(&f.missed));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::PathGlob;
    use crate::map::Attribution;
    use crate::report::tests::{pcs, table};
    use crate::report::{RunCoverage, SourceFilter};

    fn report(p: &[(u64, u64)]) -> Report {
        let t = table();
        let run = RunCoverage::build(&t, &[pcs(p)], SourceFilter::All, Attribution::AllFrames);
        Report::new(&t, &run, &[PathGlob::new("**")], "t", "k")
    }

    #[test]
    fn run_diff() {
        let a = report(&[(0x15, 1), (0x45, 1)]);
        let b = report(&[(0x15, 1), (0x25, 1), (0x35, 1), (0x55, 1)]);
        let d = CoverageDiff::new(&a, &b);
        let line = |f: &str, l| Line {
            file: f.into(),
            line: l,
        };
        assert_eq!(
            d.lines_gained,
            [
                line("drivers/vhost/net.c", 11),
                line("drivers/vhost/net.c", 12),
                line("mm/slab.c", 5)
            ]
        );
        assert_eq!(d.lines_lost, [line("drivers/vhost/vhost.c", 50)]);
        assert_eq!(d.lines_common, 1);
        assert_eq!(
            d.functions_gained,
            [Function {
                file: "mm/slab.c".into(),
                name: "kmalloc".into()
            }]
        );
        let text = d.text("a", "b");
        assert!(
            text.contains("+ lines drivers/vhost/net.c: 11-12"),
            "{text}"
        );
        assert!(
            text.contains("- function drivers/vhost/vhost.c vhost_poll"),
            "{text}"
        );
        assert!(CoverageDiff::new(&a, &a).is_empty());
    }

    const PATCH: &str = "\
From 1 Mon Sep 17 00:00:00 2001
Subject: [PATCH] vhost: x

 - a commit message line that looks like a diff line
---
diff --git a/drivers/vhost/net.c b/drivers/vhost/net.c
index 1..2 100644
--- a/drivers/vhost/net.c
+++ b/drivers/vhost/net.c
@@ -9,3 +9,4 @@ static void handle_tx(void)
 ctx 9
-old 10
+new 10
+new 11
 ctx 12
\\ No newline at end of file
@@ -20 +21,2 @@
-x
+y 21
+y 22
diff --git a/drivers/vhost/gone.c b/drivers/vhost/gone.c
deleted file mode 100644
--- a/drivers/vhost/gone.c
+++ /dev/null
@@ -1,2 +0,0 @@
-a
-b
-- 
2.39.2
";

    #[test]
    fn patch_parse_and_coverage() {
        let p = PatchLines::parse(PATCH).unwrap();
        assert_eq!(
            p.files,
            BTreeMap::from([("drivers/vhost/net.c".to_string(), vec![10, 11, 21, 22])])
        );
        let r = report(&[(0x15, 1), (0x25, 1)]);
        let c = PatchCoverage::new(&p, &r);
        assert_eq!(c.files[0].instrumented, [10, 11]);
        assert_eq!(c.files[0].hit, [10, 11]);
        assert_eq!((c.changed, c.instrumented, c.hit), (4, 2, 2));
        let r = report(&[(0x25, 1)]);
        let c = PatchCoverage::new(&p, &r);
        assert_eq!(c.files[0].missed, [10]);
        assert!(c.text().contains("missed: 10"), "{}", c.text());
    }

    /// A plain `diff -u old/ new/` (no a/ b/ prefixes) matches like `patch -p1`; a patch of
    /// files the kernel does not know says so instead of a silent 0.
    #[test]
    fn patch_paths_drop_leading_components_and_unknown_files_are_named() {
        let plain = PATCH
            .replace("--- a/drivers/vhost/net.c", "--- old/drivers/vhost/net.c")
            .replace("+++ b/drivers/vhost/net.c", "+++ new/drivers/vhost/net.c");
        let p = PatchLines::parse(&plain).unwrap();
        let c = PatchCoverage::new(&p, &report(&[(0x15, 1), (0x25, 1)]));
        assert_eq!(c.files[0].path, "drivers/vhost/net.c");
        assert!(!c.files[0].unknown);
        assert_eq!((c.changed, c.instrumented, c.hit), (4, 2, 2));
        assert!(!c.text().contains("WARNING"), "{}", c.text());

        let other = PATCH
            .replace("a/drivers/vhost/net.c", "a/fs/nosuch.c")
            .replace("b/drivers/vhost/net.c", "b/fs/nosuch.c");
        let c = PatchCoverage::new(&PatchLines::parse(&other).unwrap(), &report(&[]));
        assert!(c.files[0].unknown);
        let t = c.text();
        assert!(
            t.contains("WARNING: no file of the patch is in the kernel's debug info"),
            "{t}"
        );
        assert!(
            t.contains("fs/nosuch.c: 4 changed, 0 instrumented, 0 hit (not in"),
            "{t}"
        );
    }

    #[test]
    fn patch_parse_never_panics() {
        // Deterministic xorshift mutations of a real patch: any outcome but a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"+- @,\n0123456789ab/\\";
        for _ in 0..5000 {
            let mut b = PATCH.as_bytes().to_vec();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let _ = PatchLines::parse(&String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn patch_errors() {
        let bad = [
            ("", "no file header"),
            ("hello world\n", "no file header"),
            (
                "--- a/x\n+++ b/x\n@@ -1,2 +1,2 nope\n",
                "malformed hunk header",
            ),
            ("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n x\n", "hunk ends early"),
            (
                "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-x\n+x\n+y\n",
                "outside any hunk",
            ),
            (
                "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n x\n*y\n",
                "does not fit",
            ),
            ("diff --git a/x b/x\n@@ -1 +1 @@\n", "before a ---/+++"),
        ];
        for (text, want) in bad {
            let e = PatchLines::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        // Huge line numbers never overflow.
        let p = PatchLines::parse("--- a/x\n+++ b/x\n@@ -1 +4294967295,3 @@\n-a\n+b\n+c\n+d\n")
            .unwrap();
        assert_eq!(p.files["x"], [u32::MAX]);
        assert!(PatchLines::parse("--- a/x\n+++ b/x\n@@ -1 +99999999999,1 @@\n").is_err());
    }
}
