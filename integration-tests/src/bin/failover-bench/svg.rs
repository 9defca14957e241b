//! One SVG per scenario: a panel per system with the acknowledged writes per
//! 100 ms through HAProxy, the fault and the first `/primary` 200 marked.

use std::fmt::Write as _;

use crate::Run;
use crate::systems::System;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 120.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BIN: f64 = 0.1;

pub fn timeline(scenario: &str, runs: &[(System, Run)]) -> String {
    let start = -1.0;
    let end = runs
        .iter()
        .map(|(_, r)| r.to_primary.as_secs_f64().max(r.unavailable.as_secs_f64()) + 2.0)
        .fold(5.0, f64::max)
        .min(60.0)
        .ceil();
    let bins = ((end - start) / BIN).round() as usize;
    let counts: Vec<Vec<u32>> = runs
        .iter()
        .map(|(_, run)| {
            let mut counts = vec![0u32; bins];
            for &t in &run.acks {
                let bin = ((t - start) / BIN).floor();
                if bin >= 0.0 && (bin as usize) < bins {
                    counts[bin as usize] += 1;
                }
            }
            counts
        })
        .collect();
    let peak = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let height = TOP + PANEL * runs.len() as f64 + 40.0;
    let x = |t: f64| LEFT + (t - start) / (end - start) * (WIDTH - LEFT - RIGHT);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="20" font-size="15">{scenario}: acknowledged writes per 100 ms through HAProxy (median run)</text>"#
    );
    for (panel, ((system, run), counts)) in runs.iter().zip(&counts).enumerate() {
        let top = TOP + PANEL * panel as f64;
        let base = top + PANEL - 25.0;
        let scale = (PANEL - 65.0) / peak;
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, top + 10.0, system.label());
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{peak:.0}/100 ms</text>"##,
            LEFT - 4.0,
            base - peak * scale + 4.0
        );
        let _ =
            writeln!(svg, r##"<text x="{}" y="{}" text-anchor="end" fill="#555">0</text>"##, LEFT - 4.0, base + 4.0);
        let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{base}" x2="{}" y2="{base}" stroke="#888"/>"##, WIDTH - RIGHT);
        let bar = (WIDTH - LEFT - RIGHT) / bins as f64;
        for (i, &count) in counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let h = f64::from(count) * scale;
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.2}" height="{h:.1}" fill="#4a7fb5"/>"##,
                x(start + i as f64 * BIN),
                base - h,
                bar.max(0.5)
            );
        }
        let marks = [
            (0.0, "#d62728", "fault".to_string()),
            (
                run.to_primary.as_secs_f64(),
                "#2ca02c",
                format!("new /primary 200 at {:.2} s", run.to_primary.as_secs_f64()),
            ),
        ];
        for (t, colour, label) in marks {
            let _ = writeln!(
                svg,
                r#"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{base}" stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 2"/>"#,
                x(t),
                top + 14.0
            );
            // A label that would run off the right edge goes left of its line.
            let (anchor, label_x) =
                if x(t) > WIDTH - RIGHT - 190.0 { ("end", x(t) - 3.0) } else { ("start", x(t) + 3.0) };
            let _ = writeln!(
                svg,
                r#"<text x="{label_x:.1}" y="{}" fill="{colour}" text-anchor="{anchor}">{label}</text>"#,
                top + 24.0 + if t > 0.0 { 12.0 } else { 0.0 }
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">gap {:.2} s</text>"#,
            WIDTH - RIGHT,
            top + 10.0,
            run.unavailable.as_secs_f64()
        );
    }
    let axis = TOP + PANEL * runs.len() as f64;
    let step = if end - start > 30.0 {
        5.0
    } else if end - start > 10.0 {
        2.0
    } else {
        1.0
    };
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#, x(t), axis + 5.0);
        t += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the fault</text>"#,
        WIDTH / 2.0,
        axis + 25.0
    );
    svg.push_str("</svg>\n");
    svg
}
