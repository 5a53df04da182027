//! Which case (workload) reached which function: a table made from several reports of one
//! kernel, one column per report. `cargo xtask ci` and `cargo xtask merge` write it as
//! `functions.md` (for people) and `functions.tsv` (for tools) beside the union's report, made
//! from the per-case reports, so shards merged give the same table as one machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::Report;

/// One function of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRow {
    /// File (as in the reports).
    pub file: String,
    /// Function name.
    pub function: String,
    /// First line with sites (orders a file's rows; tells same-named functions apart).
    pub first_line: Option<u32>,
    /// Lines with sites.
    pub lines_total: usize,
    /// Lines each case hit, in column order (0: not reached).
    pub hit: Vec<usize>,
}

impl FunctionRow {
    /// How many cases reached it.
    pub fn reached_by(&self) -> usize {
        self.hit.iter().filter(|&&h| h > 0).count()
    }
}

/// Per case: functions reached, and those no other case reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseColumn {
    /// The case's name.
    pub name: String,
    /// Functions with at least one hit line.
    pub reached: usize,
    /// Of those, reached by no other case.
    pub only: usize,
}

/// The table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionMatrix {
    /// Columns, in the order given.
    pub cases: Vec<CaseColumn>,
    /// Rows by file, then first line, then name.
    pub rows: Vec<FunctionRow>,
}

type RowKey = (String, Option<u32>, String);

impl FunctionMatrix {
    /// The table of `reports` (name, report), one column each. A function is reached by a
    /// case when at least one of its lines was hit. Functions are matched by file, name and
    /// first line; one missing from a report (another filter) counts as not reached there.
    pub fn new(reports: &[(&str, &Report)]) -> FunctionMatrix {
        let n = reports.len();
        let mut rows: BTreeMap<RowKey, FunctionRow> = BTreeMap::new();
        for (col, (_, report)) in reports.iter().enumerate() {
            for file in &report.files {
                for f in &file.functions {
                    let key = (file.path.clone(), f.first_line, f.name.clone());
                    let row = rows.entry(key).or_insert_with(|| FunctionRow {
                        file: file.path.clone(),
                        function: f.name.clone(),
                        first_line: f.first_line,
                        lines_total: f.lines_total,
                        hit: vec![0; n],
                    });
                    row.lines_total = row.lines_total.max(f.lines_total);
                    row.hit[col] = f.lines_hit;
                }
            }
        }
        let rows: Vec<FunctionRow> = rows.into_values().collect();
        let cases = reports
            .iter()
            .enumerate()
            .map(|(col, (name, _))| CaseColumn {
                name: name.to_string(),
                reached: rows.iter().filter(|r| r.hit[col] > 0).count(),
                only: rows
                    .iter()
                    .filter(|r| r.hit[col] > 0 && r.reached_by() == 1)
                    .count(),
            })
            .collect();
        FunctionMatrix { cases, rows }
    }

    /// Functions no case reached.
    pub fn unreached(&self) -> usize {
        self.rows.iter().filter(|r| r.reached_by() == 0).count()
    }

    /// Markdown: a per-case summary, then one row per function (a cell: lines hit; `·`: not
    /// reached), functions no case reached last in each file's order.
    pub fn markdown(&self, title: &str, kernel: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### Functions by case: {}\n", md(title));
        let _ = writeln!(
            s,
            "Kernel {}. {} functions; {} reached by no case. A cell is the lines of the \
             function the case covered (of `lines`); `·`: not reached.\n",
            md(kernel),
            self.rows.len(),
            self.unreached()
        );
        let _ = writeln!(s, "| case | functions reached | reached by no other case |");
        let _ = writeln!(s, "|---|---:|---:|");
        for c in &self.cases {
            let _ = writeln!(s, "| {} | {} | {} |", md(&c.name), c.reached, c.only);
        }
        let _ = writeln!(s);
        let _ = write!(s, "| file | function | lines |");
        for c in &self.cases {
            let _ = write!(s, " {} |", md(&c.name));
        }
        let _ = writeln!(s, " cases |");
        let _ = write!(s, "|---|---|---:|");
        for _ in &self.cases {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s, "---:|");
        for r in &self.rows {
            let _ = write!(
                s,
                "| {} | `{}` | {} |",
                md(&r.file),
                md(&r.function),
                r.lines_total
            );
            for h in &r.hit {
                if *h > 0 {
                    let _ = write!(s, " {h} |");
                } else {
                    let _ = write!(s, " · |");
                }
            }
            let _ = writeln!(s, " {} |", r.reached_by());
        }
        s
    }

    /// Tab-separated: `file function first_line lines_total <case>...` with lines hit per
    /// case; a header row names the cases.
    pub fn tsv(&self) -> String {
        let mut s = String::from("file\tfunction\tfirst_line\tlines_total");
        for c in &self.cases {
            s.push('\t');
            s.push_str(&tsv_field(&c.name));
        }
        s.push('\n');
        for r in &self.rows {
            let _ = write!(
                s,
                "{}\t{}\t{}\t{}",
                tsv_field(&r.file),
                tsv_field(&r.function),
                r.first_line.map(|l| l.to_string()).unwrap_or_default(),
                r.lines_total
            );
            for h in &r.hit {
                let _ = write!(s, "\t{h}");
            }
            s.push('\n');
        }
        s
    }
}

/// A Markdown table cell: pipes and line breaks escaped.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A TSV field: tabs and line breaks become spaces.
fn tsv_field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FileReport, FunctionReport, PcStats, Totals};

    fn func(name: &str, first: u32, total: usize, hit: usize) -> FunctionReport {
        FunctionReport {
            name: name.into(),
            first_line: Some(first),
            last_line: Some(first + 10),
            lines_total: total,
            lines_hit: hit,
            sites: total,
            sites_hit: hit,
            count: hit as u64,
            calls: 0,
            decl_line: None,
        }
    }

    fn report(files: Vec<(&str, Vec<FunctionReport>)>) -> Report {
        Report {
            title: "t".into(),
            kernel: "k".into(),
            filter: vec![],
            totals: Totals::default(),
            pcs: PcStats::default(),
            files: files
                .into_iter()
                .map(|(p, functions)| FileReport {
                    path: p.into(),
                    lines_total: 0,
                    lines_hit: 0,
                    functions_total: functions.len(),
                    functions_hit: 0,
                    functions,
                    lines: vec![],
                })
                .collect(),
            host: vec![],
        }
    }

    #[test]
    fn columns_count_reached_and_unique_functions() {
        let tx = report(vec![(
            "drivers/vhost/net.c",
            vec![
                func("handle_tx", 100, 20, 12),
                func("handle_rx", 300, 30, 0),
                func("vhost_net_open", 50, 8, 8),
            ],
        )]);
        let rx = report(vec![(
            "drivers/vhost/net.c",
            vec![
                func("handle_tx", 100, 20, 0),
                func("handle_rx", 300, 30, 25),
                func("vhost_net_open", 50, 8, 7),
            ],
        )]);
        let m = FunctionMatrix::new(&[("tx", &tx), ("rx", &rx)]);
        assert_eq!(
            m.cases,
            vec![
                CaseColumn {
                    name: "tx".into(),
                    reached: 2,
                    only: 1
                },
                CaseColumn {
                    name: "rx".into(),
                    reached: 2,
                    only: 1
                }
            ]
        );
        // Ordered by first line within the file.
        let names: Vec<&str> = m.rows.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, ["vhost_net_open", "handle_tx", "handle_rx"]);
        assert_eq!(m.rows[0].hit, vec![8, 7]);
        assert_eq!(m.rows[0].reached_by(), 2);
        assert_eq!(m.unreached(), 0);
        let md = m.markdown("vhost", "6.12");
        assert!(md.contains("| tx | 2 | 1 |"), "{md}");
        assert!(
            md.contains("| drivers/vhost/net.c | `handle_tx` | 20 | 12 | · | 1 |"),
            "{md}"
        );
        let tsv = m.tsv();
        assert_eq!(
            tsv.lines().next(),
            Some("file\tfunction\tfirst_line\tlines_total\ttx\trx")
        );
        assert!(tsv.contains("drivers/vhost/net.c\thandle_rx\t300\t30\t0\t25\n"));
    }

    #[test]
    fn functions_missing_from_a_report_and_unreached_ones_are_rows_too() {
        let a = report(vec![
            (
                "drivers/vhost/vsock.c",
                vec![func("vhost_vsock_dev_open", 10, 5, 5)],
            ),
            (
                "drivers/vhost/iotlb.c",
                vec![func("vhost_iotlb_free", 7, 3, 0)],
            ),
        ]);
        let b = report(vec![(
            "drivers/vhost/net.c",
            vec![func("handle_tx", 1, 4, 1)],
        )]);
        let m = FunctionMatrix::new(&[("a", &a), ("b", &b)]);
        assert_eq!(m.rows.len(), 3);
        let iotlb = m
            .rows
            .iter()
            .find(|r| r.function == "vhost_iotlb_free")
            .unwrap();
        assert_eq!(iotlb.hit, vec![0, 0]);
        assert_eq!(m.unreached(), 1);
        let net = m.rows.iter().find(|r| r.function == "handle_tx").unwrap();
        assert_eq!(net.hit, vec![0, 1], "not in a's report: not reached there");
        assert!(m
            .markdown("x", "k")
            .contains("3 functions; 1 reached by no case"));
    }

    #[test]
    fn same_named_functions_of_one_file_stay_apart_and_names_are_escaped() {
        let a = report(vec![(
            "f.c",
            vec![
                func("dup", 10, 2, 1),
                func("dup", 40, 3, 0),
                func("a|b", 60, 1, 1),
            ],
        )]);
        let m = FunctionMatrix::new(&[("case|1", &a)]);
        assert_eq!(m.rows.len(), 3);
        let md = m.markdown("t", "k");
        assert!(md.contains("| case\\|1 |"), "{md}");
        assert!(md.contains("`a\\|b`"), "{md}");
    }

    #[test]
    fn no_reports_make_an_empty_table() {
        let m = FunctionMatrix::new(&[]);
        assert!(m.rows.is_empty() && m.cases.is_empty());
        assert_eq!(m.tsv(), "file\tfunction\tfirst_line\tlines_total\n");
    }
}
