//! Reproducible coverage tests: a golden file per workload lists the lines and functions it must
//! cover; K runs are classified into stable (covered in every run) and flaky items; a check
//! fails on a golden item no run covered and reports flaky ones without failing.
//!
//! Golden file (`goldens/<workload>.txt`), sorted, one item a line:
//! ```text
//! # comment
//! workload vhost-net-tx
//! build-id 0123abcd...        (the kernel the lines were recorded on)
//! kernel-key 262c3245...
//! filter drivers/vhost/*
//! function drivers/vhost/net.c handle_tx_copy
//! line drivers/vhost/net.c 812
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fmt::Write as _;

use crate::report::Report;

/// A covered function or line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    /// A function (file, name).
    Function {
        /// Path.
        file: String,
        /// Name.
        name: String,
    },
    /// A line (file, line).
    Line {
        /// Path.
        file: String,
        /// 1-based line.
        line: u32,
    },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Function { file, name } => write!(f, "function {file} {name}"),
            Item::Line { file, line } => write!(f, "line {file} {line}"),
        }
    }
}

/// The covered items of a report.
pub fn covered_items(r: &Report) -> BTreeSet<Item> {
    let mut out = BTreeSet::new();
    for f in &r.files {
        for g in f.functions.iter().filter(|g| g.sites_hit > 0) {
            out.insert(Item::Function {
                file: f.path.clone(),
                name: g.name.clone(),
            });
        }
        for l in f.lines.iter().filter(|l| l.sites_hit > 0) {
            out.insert(Item::Line {
                file: f.path.clone(),
                line: l.line,
            });
        }
    }
    out
}

/// A golden file that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("golden file line {line}: {what}")]
pub struct GoldenError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

/// A workload's golden coverage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Golden {
    /// Workload name.
    pub workload: String,
    /// Build-id (hex) of the kernel it was recorded on.
    pub build_id: Option<String>,
    /// Kernel cache key it was recorded on.
    pub kernel_key: Option<String>,
    /// The filter the items were taken under.
    pub filter: String,
    /// Items every run must cover.
    pub items: BTreeSet<Item>,
}

impl Golden {
    /// Parses a golden file.
    pub fn parse(text: &str) -> Result<Self, GoldenError> {
        let mut g = Golden::default();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |what: &str| GoldenError {
                line: i + 1,
                what: format!("{what}: {raw:?}"),
            };
            let (key, rest) = l
                .split_once(' ')
                .ok_or_else(|| err("expected `KEY VALUE`"))?;
            match key {
                "workload" => g.workload = rest.to_string(),
                "build-id" => g.build_id = Some(rest.to_string()),
                "kernel-key" => g.kernel_key = Some(rest.to_string()),
                "filter" => g.filter = rest.to_string(),
                "function" => {
                    let (file, name) = rest
                        .split_once(' ')
                        .ok_or_else(|| err("expected `function FILE NAME`"))?;
                    g.items.insert(Item::Function {
                        file: file.into(),
                        name: name.into(),
                    });
                }
                "line" => {
                    let (file, n) = rest
                        .split_once(' ')
                        .ok_or_else(|| err("expected `line FILE N`"))?;
                    let line = n.parse().map_err(|_| err("bad line number"))?;
                    g.items.insert(Item::Line {
                        file: file.into(),
                        line,
                    });
                }
                _ => return Err(err("unknown key")),
            }
        }
        if g.workload.is_empty() {
            return Err(GoldenError {
                line: 0,
                what: "no `workload NAME` line".into(),
            });
        }
        Ok(g)
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Lines and functions of {} that workload {} covers in every run.\n\
             # Checked by tests/tests/coverage_golden.rs; regenerate: cargo xtask golden --update {}",
            self.filter, self.workload, self.workload
        );
        let _ = writeln!(s, "workload {}", self.workload);
        if let Some(b) = &self.build_id {
            let _ = writeln!(s, "build-id {b}");
        }
        if let Some(k) = &self.kernel_key {
            let _ = writeln!(s, "kernel-key {k}");
        }
        let _ = writeln!(s, "filter {}", self.filter);
        for i in &self.items {
            let _ = writeln!(s, "{i}");
        }
        s
    }

    /// `Err(reason)` when the golden was recorded on another kernel (line numbers would not
    /// mean the same). Compares kernel keys when both are known (the key hashes the source,
    /// the config fragments and the toolchain, which fix the line numbers; a rebuild of the
    /// same inputs on another machine has another build-id, since the kernel embeds its
    /// build time), else build-ids.
    pub fn check_kernel(
        &self,
        build_id: Option<&str>,
        kernel_key: Option<&str>,
    ) -> Result<(), String> {
        let mismatch = |what: &str, ours: &str, theirs: &str| {
            Err(format!(
                "golden for {} was recorded on kernel {what} {theirs}, this kernel has {ours}; \
                 regenerate it with `cargo xtask golden --update {}` and review the diff",
                self.workload, self.workload
            ))
        };
        match (&self.kernel_key, kernel_key, &self.build_id, build_id) {
            (Some(g), Some(o), _, _) if g != o => mismatch("key", o, g),
            (Some(_), Some(_), _, _) => Ok(()),
            (_, _, Some(g), Some(o)) if g != o => mismatch("build-id", o, g),
            _ => Ok(()),
        }
    }

    /// The same golden with its functions only: what still means the same on another
    /// kernel (a new Debian kernel update moves line numbers, not function names).
    pub fn functions_only(&self) -> Golden {
        let mut g = self.clone();
        g.items.retain(|i| matches!(i, Item::Function { .. }));
        g
    }
}

/// Items of K runs: stable (in every run) and flaky (in some).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stability {
    /// Runs.
    pub runs: usize,
    /// Covered in every run.
    pub stable: BTreeSet<Item>,
    /// Covered in some runs: item → number of runs.
    pub flaky: BTreeMap<Item, usize>,
}

/// Classifies the covered items of several runs.
pub fn classify(runs: &[BTreeSet<Item>]) -> Stability {
    let mut count: BTreeMap<&Item, usize> = BTreeMap::new();
    for r in runs {
        for i in r {
            *count.entry(i).or_default() += 1;
        }
    }
    let mut s = Stability {
        runs: runs.len(),
        ..Stability::default()
    };
    for (i, n) in count {
        if n == runs.len() {
            s.stable.insert(i.clone());
        } else {
            s.flaky.insert(i.clone(), n);
        }
    }
    s
}

/// Result of checking runs against a golden.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoldenCheck {
    /// Runs checked.
    pub runs: usize,
    /// Golden items no run covered: failures.
    pub missing: Vec<Item>,
    /// Golden items only some runs covered: reported, not failures.
    pub flaky_golden: Vec<(Item, usize)>,
    /// Items every run covered that the golden lacks (update the golden to require them).
    pub new_stable: Vec<Item>,
    /// Other flaky items.
    pub flaky_other: Vec<(Item, usize)>,
}

impl GoldenCheck {
    /// Compares a golden with the stability of K runs.
    pub fn new(golden: &Golden, s: &Stability) -> Self {
        let mut c = GoldenCheck {
            runs: s.runs,
            ..GoldenCheck::default()
        };
        for i in &golden.items {
            if s.stable.contains(i) {
                continue;
            }
            match s.flaky.get(i) {
                Some(&n) => c.flaky_golden.push((i.clone(), n)),
                None => c.missing.push(i.clone()),
            }
        }
        c.new_stable = s.stable.difference(&golden.items).cloned().collect();
        c.flaky_other = s
            .flaky
            .iter()
            .filter(|(i, _)| !golden.items.contains(*i))
            .map(|(i, n)| (i.clone(), *n))
            .collect();
        c
    }

    /// No golden item is missing.
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
    }

    /// A readable diff: `-` missing golden items, `~` flaky, `+` newly stable.
    pub fn render(&self, workload: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "golden {workload}: {} runs, {} golden items missing, {} golden items flaky, \
             {} new stable items, {} other flaky items",
            self.runs,
            self.missing.len(),
            self.flaky_golden.len(),
            self.new_stable.len(),
            self.flaky_other.len()
        );
        for i in &self.missing {
            let _ = writeln!(s, "- {i}    (golden; covered in 0 of {} runs)", self.runs);
        }
        for (i, n) in &self.flaky_golden {
            let _ = writeln!(
                s,
                "~ {i}    (golden; covered in {n} of {} runs: flaky)",
                self.runs
            );
        }
        for (i, n) in &self.flaky_other {
            let _ = writeln!(s, "~ {i}    (covered in {n} of {} runs: flaky)", self.runs);
        }
        for i in &self.new_stable {
            let _ = writeln!(s, "+ {i}    (covered in every run, not in the golden)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(l: u32) -> Item {
        Item::Line {
            file: "drivers/vhost/net.c".into(),
            line: l,
        }
    }

    #[test]
    fn golden_roundtrip_classify_check() {
        let g = Golden {
            workload: "w".into(),
            build_id: Some("ab".into()),
            kernel_key: Some("k".into()),
            filter: "drivers/vhost/*".into(),
            items: [
                line(1),
                line(2),
                line(3),
                Item::Function {
                    file: "drivers/vhost/net.c".into(),
                    name: "handle_tx".into(),
                },
            ]
            .into(),
        };
        let text = g.render();
        assert!(text.contains("\nline drivers/vhost/net.c 2\n"));
        assert_eq!(Golden::parse(&text).unwrap(), g);
        assert!(Golden::parse("workload w\nline x y\n")
            .unwrap_err()
            .to_string()
            .contains("bad line number"));
        assert!(Golden::parse("line x 1\n").is_err());

        let f = Item::Function {
            file: "drivers/vhost/net.c".into(),
            name: "handle_tx".into(),
        };
        let runs = [
            BTreeSet::from([line(1), line(2), line(4), f.clone()]),
            BTreeSet::from([line(1), line(4), line(5), f.clone()]),
            BTreeSet::from([line(1), line(4), f.clone()]),
        ];
        let s = classify(&runs);
        assert_eq!(s.stable, BTreeSet::from([line(1), line(4), f]));
        assert_eq!(s.flaky, BTreeMap::from([(line(2), 1), (line(5), 1)]));
        let c = GoldenCheck::new(&g, &s);
        assert!(!c.passed());
        assert_eq!(c.missing, [line(3)]);
        assert_eq!(c.flaky_golden, [(line(2), 1)]);
        assert_eq!(c.new_stable, [line(4)]);
        let text = c.render("w");
        assert!(
            text.contains("- line drivers/vhost/net.c 3    (golden; covered in 0 of 3 runs)"),
            "{text}"
        );
        assert!(text.contains("~ line drivers/vhost/net.c 2"), "{text}");

        assert!(g.check_kernel(Some("ab"), None).is_ok());
        // Same inputs rebuilt elsewhere: another build-id, same key.
        assert!(g.check_kernel(Some("cd"), Some("k")).is_ok());
        assert!(g
            .check_kernel(Some("cd"), None)
            .unwrap_err()
            .contains("build-id"));
        let f = g.functions_only();
        assert!(f.items.iter().all(|i| matches!(i, Item::Function { .. })));
        assert!(g
            .check_kernel(None, Some("k2"))
            .unwrap_err()
            .contains("key"));
        assert!(g.check_kernel(None, None).is_ok());
    }
}
