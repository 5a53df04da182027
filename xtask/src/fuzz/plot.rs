//! The campaign's plot: distinct PCs over time (top) and executions per second (bottom), as
//! a hand-written SVG (no plotting library: two polylines, axes and labels).

use std::fmt::Write;

use super::stream::Point;

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 70.0;
const GAP: f64 = 50.0;

/// Executions per second over windows of at least [`RATE_WINDOW_S`] seconds (the points come
/// at every new corpus entry and once a second, timed by the host's 200 ms polling).
pub fn rates(points: &[Point]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let Some(mut anchor) = points.first() else {
        return out;
    };
    for p in points {
        let dt = p.t - anchor.t;
        if dt >= RATE_WINDOW_S {
            out.push((p.t, p.execs.saturating_sub(anchor.execs) as f64 / dt));
            anchor = p;
        }
    }
    out
}

/// Shortest window of an executions-per-second value.
pub const RATE_WINDOW_S: f64 = 2.0;

/// A step line through `series`: each value holds until the next point.
fn steps(series: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(series.len() * 2);
    for (i, &(t, v)) in series.iter().enumerate() {
        if i > 0 {
            out.push((t, series[i - 1].1));
        }
        out.push((t, v));
    }
    out
}

fn chart(out: &mut String, top: f64, title: &str, series: &[(f64, f64)], t_max: f64) {
    let y_max = series.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let x = |t: f64| LEFT + (t / t_max.max(1e-9)) * (W - LEFT - 20.0);
    let y = |v: f64| top + H - v / y_max * H;
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{}" font-size="14">{title}</text>"##,
        top - 8.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{H}" fill="none" stroke="#999"/>"##,
        W - LEFT - 20.0
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = y_max * frac;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.0}</text>"##,
            LEFT - 4.0,
            y(v) + 4.0
        );
    }
    let pts: Vec<String> = series
        .iter()
        .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        pts.join(" ")
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{t_max:.0} s</text>"##,
        W - 20.0,
        top + H + 14.0
    );
}

/// The SVG document for `points` of a campaign on `target`.
pub fn svg(target: &str, points: &[Point]) -> String {
    let t_max = points.last().map_or(1.0, |p| p.t).max(1.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif">"##,
        2.0 * H + 2.0 * GAP + 30.0
    );
    let cov: Vec<(f64, f64)> = steps(
        &points
            .iter()
            .map(|p| (p.t, p.pcs as f64))
            .collect::<Vec<_>>(),
    );
    chart(
        &mut out,
        GAP,
        &format!("{target}: distinct PCs (remote + local) over time"),
        &cov,
        t_max,
    );
    chart(
        &mut out,
        2.0 * GAP + H,
        "executions per second",
        &rates(points),
        t_max,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_both_series_and_survives_no_points() {
        let pts = [
            Point {
                t: 0.0,
                execs: 0,
                pcs: 0,
                remote: 0,
                corpus: 0,
            },
            Point {
                t: 2.0,
                execs: 30,
                pcs: 500,
                remote: 100,
                corpus: 4,
            },
            Point {
                t: 4.0,
                execs: 70,
                pcs: 650,
                remote: 120,
                corpus: 6,
            },
        ];
        assert_eq!(rates(&pts), vec![(2.0, 15.0), (4.0, 20.0)]);
        assert_eq!(
            steps(&[(0.0, 1.0), (2.0, 5.0)]),
            vec![(0.0, 1.0), (2.0, 1.0), (2.0, 5.0)]
        );
        let s = svg("vhost-net", &pts);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("650"));
        let empty = svg("vhost-net", &[]);
        assert_eq!(empty.matches("<polyline").count(), 2);
    }
}
