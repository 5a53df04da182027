//! Self-contained HTML report: `index.html` (files with totals) and one annotated source page
//! per file under `files/`. No scripts, no external resources; CSS is inline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{FileReport, Report};
use crate::store::StoreError;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}\
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left}\
th{background:#eee}tr.file:hover{background:#f6f6f6}\
.bar{display:inline-block;height:10px;background:#c33;width:100px}\
.bar span{display:block;height:10px;background:#3a3}\
pre{margin:0}table.src td{padding:0 6px;font-family:monospace;white-space:pre}\
tr.hit td.code{background:#cfc}tr.miss td.code{background:#fcc}\
td.ln{color:#888;text-align:right}td.cnt{color:#555;text-align:right}\
.legend span{padding:0 6px;margin-right:8px}";

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page name of file `i` (`files/f<i>-<path with / as _>.html`).
pub fn page_name(i: usize, path: &str) -> String {
    let safe: String = path
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("f{i}-{safe}.html")
}

fn pct(hit: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * hit as f64 / total as f64
    }
}

fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

fn index(report: &Report) -> String {
    let mut s = head(&format!("coverage: {}", report.title));
    let t = &report.totals;
    let _ = write!(
        s,
        "<h1>Coverage: {}</h1>\n<p>Kernel: {}<br>Filter: {}<br>Lines: {}/{} ({:.1}%), \
         functions: {}/{}<br>PCs: {} distinct, {} sites hit, {} unmatched{}</p>\n",
        escape(&report.title),
        escape(&report.kernel),
        escape(&report.filter.join(" ")),
        t.lines_hit,
        t.lines_total,
        pct(t.lines_hit, t.lines_total),
        t.functions_hit,
        t.functions_total,
        report.pcs.distinct,
        report.pcs.sites_hit,
        report.pcs.unmatched,
        if report.pcs.overflow {
            " <b>(a kcov area overflowed: coverage was lost)</b>"
        } else {
            ""
        }
    );
    s.push_str(
        "<table><tr><th>file</th><th>lines</th><th></th><th>%</th><th>functions</th></tr>\n",
    );
    for (i, f) in report.files.iter().enumerate() {
        let p = pct(f.lines_hit, f.lines_total);
        let _ = writeln!(
            s,
            "<tr class=\"file\"><td><a href=\"files/{}\">{}</a></td><td>{}/{}</td>\
             <td><span class=\"bar\"><span style=\"width:{:.0}px\"></span></span></td>\
             <td>{p:.1}</td><td>{}/{}</td></tr>",
            escape(&page_name(i, &f.path)),
            escape(&f.path),
            f.lines_hit,
            f.lines_total,
            p,
            f.functions_hit,
            f.functions_total
        );
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

fn file_page(report: &Report, f: &FileReport, source_root: Option<&Path>) -> String {
    let mut s = head(&f.path);
    let _ = write!(
        s,
        "<p><a href=\"../index.html\">index</a> · {}</p><h1>{}</h1>\n\
         <p>Lines: {}/{} ({:.1}%), functions: {}/{}</p>\n\
         <p class=\"legend\"><span style=\"background:#cfc\">hit</span>\
         <span style=\"background:#fcc\">instrumented, not hit</span>\
         <span>not instrumented</span></p>\n",
        escape(&report.title),
        escape(&f.path),
        f.lines_hit,
        f.lines_total,
        pct(f.lines_hit, f.lines_total),
        f.functions_hit,
        f.functions_total
    );
    s.push_str(
        "<h2>Functions</h2><table><tr><th>function</th><th>line</th><th>lines</th>\
         <th>count</th></tr>\n",
    );
    for g in &f.functions {
        let line = g.first_line.map(|l| l.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "<tr><td><a href=\"#L{line}\">{}</a></td><td>{line}</td><td>{}/{}</td><td>{}</td></tr>",
            escape(&g.name),
            g.lines_hit,
            g.lines_total,
            g.count
        );
    }
    s.push_str("</table>\n<h2>Source</h2>\n");
    let status = |line: u32| {
        f.lines
            .binary_search_by_key(&line, |l| l.line)
            .ok()
            .map(|i| &f.lines[i])
    };
    let src_path: Option<PathBuf> = source_root.map(|r| r.join(&f.path));
    let text = src_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    s.push_str("<table class=\"src\">\n");
    match text {
        Some(text) => {
            for (i, code) in text.lines().enumerate() {
                let n = (i + 1) as u32;
                row(&mut s, n, status(n), code);
            }
        }
        None => {
            let _ = writeln!(
                s,
                "<p><b>source not available</b>{}: showing the instrumented lines only.</p>",
                match &src_path {
                    Some(p) => format!(" ({} not found)", escape(&p.display().to_string())),
                    None => " (no source root given)".to_string(),
                }
            );
            for l in &f.lines {
                row(&mut s, l.line, Some(l), "");
            }
        }
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

fn row(s: &mut String, n: u32, st: Option<&crate::report::LineReport>, code: &str) {
    let (class, count) = match st {
        Some(l) if l.sites_hit > 0 => ("hit", l.count.to_string()),
        Some(_) => ("miss", "0".to_string()),
        None => ("", String::new()),
    };
    let _ = writeln!(
        s,
        "<tr id=\"L{n}\" class=\"{class}\"><td class=\"ln\">{n}</td><td class=\"cnt\">{count}</td>\
         <td class=\"code\">{}</td></tr>",
        escape(code)
    );
}

/// Writes the report into `dir` (`index.html`, `files/*.html`); sources come from
/// `source_root` (missing files get a page with the instrumented lines only).
pub fn write_html(
    report: &Report,
    dir: &Path,
    source_root: Option<&Path>,
) -> Result<PathBuf, StoreError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let files = dir.join("files");
    std::fs::create_dir_all(&files).map_err(io(&files))?;
    for (i, f) in report.files.iter().enumerate() {
        let p = files.join(page_name(i, &f.path));
        std::fs::write(&p, file_page(report, f, source_root)).map_err(io(&p))?;
    }
    let p = dir.join("index.html");
    std::fs::write(&p, index(report)).map_err(io(&p))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::PathGlob;
    use crate::map::Attribution;
    use crate::report::tests::{pcs, table};
    use crate::report::{RunCoverage, SourceFilter};

    #[test]
    fn html_pages() {
        let t = table();
        let run = RunCoverage::build(
            &t,
            &[pcs(&[(0x15, 3)])],
            SourceFilter::All,
            Attribution::AllFrames,
        );
        let r = Report::new(&t, &run, &[PathGlob::new("drivers/vhost/*")], "<run>", "k");
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("drivers/vhost")).unwrap();
        let net: String = (1..=12).map(|i| format!("line {i} <x>\n")).collect();
        std::fs::write(src.path().join("drivers/vhost/net.c"), net).unwrap();
        let out = tempfile::tempdir().unwrap();
        let index = write_html(&r, out.path(), Some(src.path())).unwrap();
        let index = std::fs::read_to_string(index).unwrap();
        assert!(index.contains("&lt;run&gt;"));
        assert!(index.contains("files/f0-drivers_vhost_net.c.html"));
        let page =
            std::fs::read_to_string(out.path().join("files/f0-drivers_vhost_net.c.html")).unwrap();
        assert!(page.contains(
            "<tr id=\"L10\" class=\"hit\"><td class=\"ln\">10</td><td class=\"cnt\">3</td>\
             <td class=\"code\">line 10 &lt;x&gt;</td></tr>"
        ));
        assert!(page.contains("<tr id=\"L11\" class=\"miss\">"));
        assert!(page.contains("<tr id=\"L1\" class=\"\">"));
        // vhost.c is not in the source root: graceful fallback.
        let page = std::fs::read_to_string(out.path().join("files/f1-drivers_vhost_vhost.c.html"))
            .unwrap();
        assert!(page.contains("source not available"));
        assert!(page.contains("<tr id=\"L50\" class=\"miss\">"));
    }
}
