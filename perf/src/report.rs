//! Renders run summaries as self-contained HTML with inline SVG charts:
//! latency over time, throughput over time and the latency distribution,
//! each target drawn in its own colour so a comparison reads at a glance.

use std::fmt::Write as _;

use crate::stats::{MemorySummary, RunSummary, TargetSummary};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

/// Colours given to targets in order.
const PALETTE: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    /// SVG `stroke-dasharray`, empty for a solid line.
    pub dash: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Linear,
    /// Percentiles spread as `-log10(1 - p)` so the tail gets the room.
    Percentile,
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn percentile_x(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-5);
    -tail.log10()
}

fn nice_number(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn micros_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.1}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{us:.0}µs")
    }
}

/// A line chart. With `log_y`, values below 1 are drawn at 1.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_axis: XAxis,
    log_y: bool,
    y_is_micros: bool,
) -> String {
    let tx = |x: f64| match x_axis {
        XAxis::Linear => x,
        XAxis::Percentile => percentile_x(x),
    };
    let ty = |y: f64| if log_y { y.max(1.0).log10() } else { y };
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x_min = x_min.min(tx(x));
        x_max = x_max.max(tx(x));
        y_min = y_min.min(ty(y));
        y_max = y_max.max(ty(y));
    }
    if x_min > x_max {
        (x_min, x_max, y_min, y_max) = (0.0, 1.0, 0.0, 1.0);
    }
    if !log_y {
        y_min = 0.0;
    } else {
        y_min = y_min.floor();
        y_max = y_max.ceil();
    }
    if x_max - x_min < 1e-9 {
        x_max = x_min + 1.0;
    }
    if y_max - y_min < 1e-9 {
        y_max = y_min + 1.0;
    }
    if !log_y {
        y_max *= 1.05;
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| TOP + plot_h - (y - y_min) / (y_max - y_min) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Y grid and labels.
    let y_label_text = |v: f64| {
        let value = if log_y { 10f64.powf(v) } else { v };
        if y_is_micros {
            micros_label(value)
        } else {
            nice_number(value)
        }
    };
    let y_ticks: Vec<f64> = if log_y {
        (y_min as i64..=y_max as i64).map(|v| v as f64).collect()
    } else {
        (0..=4)
            .map(|i| y_min + (y_max - y_min) * f64::from(i) / 4.0)
            .collect()
    };
    for v in y_ticks {
        let y = py(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            y_label_text(v)
        );
    }
    // X ticks.
    let x_ticks: Vec<(f64, String)> = match x_axis {
        XAxis::Percentile => [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
            .iter()
            .map(|&p| (percentile_x(p), format!("{p}%")))
            .filter(|(x, _)| *x <= x_max + 1e-9)
            .collect(),
        XAxis::Linear => (0..=5)
            .map(|i| {
                let x = x_min + (x_max - x_min) * f64::from(i) / 5.0;
                (x, nice_number(x))
            })
            .collect(),
    };
    for (x, label) in x_ticks {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            px(x),
            TOP + plot_h,
            TOP + plot_h + 15.0,
            escape(&label)
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let mut path = String::new();
        for (j, &(x, y)) in s.points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if j == 0 { "M" } else { "L" },
                px(tx(x)),
                py(ty(y))
            );
        }
        let dash = if s.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, s.dash)
        };
        let _ = write!(
            svg,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.6"{dash}/>"#,
            path.trim_end(),
            s.color
        );
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"/>"#,
                px(tx(x)),
                py(ty(y)),
                s.color
            );
        }
        let ly = TOP + 10.0 + i as f64 * 16.0;
        let lx = LEFT + plot_w + 10.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            s.color,
            lx + 27.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn color(i: usize) -> String {
    PALETTE[i % PALETTE.len()].to_string()
}

/// Picks one figure out of a timeline point.
type PointValue = fn(&crate::stats::TimelinePoint) -> u64;

/// p50/p99/p99.9/max per second for every target.
pub fn latency_over_time_svg(run: &RunSummary) -> String {
    let mut series = Vec::new();
    for (i, t) in run.targets.iter().enumerate() {
        let pick: [(&str, &str, PointValue); 4] = [
            ("p50", "", |p| p.latency_us_p50),
            ("p99", "6,3", |p| p.latency_us_p99),
            ("p99.9", "2,3", |p| p.latency_us_p999),
            ("max", "1,2", |p| p.latency_us_max),
        ];
        for (label, dash, f) in pick {
            series.push(Series {
                name: format!("{} {label}", t.target),
                color: color(i),
                dash: dash.to_string(),
                points: t
                    .timeline
                    .iter()
                    .filter(|p| p.deliveries > 0)
                    .map(|p| (p.t_s as f64, f(p) as f64))
                    .collect(),
            });
        }
    }
    line_chart(
        &format!("{}: end-to-end latency per second", run.scenario.name),
        "seconds since sending began",
        "latency (log)",
        &series,
        XAxis::Linear,
        true,
        true,
    )
}

/// Deliveries/s (solid) and sends/s (dashed) per second for every target.
pub fn throughput_svg(run: &RunSummary) -> String {
    let mut series = Vec::new();
    for (i, t) in run.targets.iter().enumerate() {
        series.push(Series {
            name: format!("{} deliveries/s", t.target),
            color: color(i),
            dash: String::new(),
            points: t
                .timeline
                .iter()
                .map(|p| (p.t_s as f64, p.deliveries as f64))
                .collect(),
        });
        series.push(Series {
            name: format!("{} sends/s", t.target),
            color: color(i),
            dash: "6,3".into(),
            points: t
                .timeline
                .iter()
                .map(|p| (p.t_s as f64, p.sends as f64))
                .collect(),
        });
    }
    line_chart(
        &format!("{}: throughput per second", run.scenario.name),
        "seconds since sending began",
        "per second",
        &series,
        XAxis::Linear,
        false,
        false,
    )
}

/// The whole run's latency by percentile for every target.
pub fn distribution_svg(run: &RunSummary) -> String {
    let series: Vec<Series> = run
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| Series {
            name: t.target.clone(),
            color: color(i),
            dash: String::new(),
            points: t
                .latency_spectrum
                .iter()
                .map(|&(p, us)| (p, us as f64))
                .collect(),
        })
        .collect();
    line_chart(
        &format!("{}: latency distribution", run.scenario.name),
        "percentile",
        "latency (log)",
        &series,
        XAxis::Percentile,
        true,
        true,
    )
}

fn target_row(t: &TargetSummary) -> String {
    let notices: Vec<String> = t.notices.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let disconnected: Vec<String> = t
        .disconnected
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!(
        "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{:.0}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        escape(&t.target),
        t.connect.ok,
        t.connect.attempted,
        t.sent,
        t.sends_per_s,
        t.acked,
        t.deliveries,
        t.deliveries_per_s,
        t.lost,
        micros_label(t.latency.p50_us as f64),
        micros_label(t.latency.p99_us as f64),
        micros_label(t.latency.p999_us as f64),
        micros_label(t.latency.max_us as f64),
        micros_label(t.ack_latency.p99_us as f64),
        escape(&notices.join(", ")),
        escape(&disconnected.join(", ")),
        match (t.server.stalls, t.server.stall_ms_max) {
            (Some(c), Some(ms)) => format!("{c} (max {ms:.0} ms)"),
            (Some(c), None) => c.to_string(),
            _ => "-".into(),
        },
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}\
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px}th{background:#f4f4f4}\
pre{background:#f8f8f8;padding:8px;font-size:12px;overflow:auto}";

/// The full HTML report of a scenario run.
pub fn run_html(run: &RunSummary) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>twitchy-perf: {0}</title>\
         <style>{STYLE}</style></head><body><h1>Scenario {0}</h1>",
        escape(&run.scenario.name)
    );
    html.push_str(
        "<table><tr><th>target</th><th>joined</th><th>sent</th><th>sends/s</th><th>acked</th>\
         <th>deliveries</th><th>deliveries/s</th><th>lost</th><th>p50</th><th>p99</th>\
         <th>p99.9</th><th>max</th><th>ack p99</th><th>NOTICEs</th><th>disconnected</th><th>server stalls</th></tr>",
    );
    for t in &run.targets {
        html.push_str(&target_row(t));
    }
    html.push_str("</table>");
    if !run.ratios.is_empty() {
        html.push_str("<h2>Ratios</h2><ul>");
        for r in &run.ratios {
            let fmt = crate::stats::format_ratio;
            let _ = write!(
                html,
                "<li>{v} vs {t}: deliveries/s {}, p99 latency {}, p50 latency {}, server CPU per delivery {}</li>",
                fmt(r.deliveries_per_s),
                fmt(r.latency_p99),
                fmt(r.latency_p50),
                fmt(r.server_cpu_per_delivery),
                v = escape(&r.versus),
                t = escape(&r.target),
            );
        }
        html.push_str(
            "</ul><p>Each ratio is how many times better the first target did: its \
             deliveries/s over the other's, the other's latency or CPU over its own.</p>",
        );
    }
    html.push_str(&latency_over_time_svg(run));
    html.push_str(&throughput_svg(run));
    html.push_str(&distribution_svg(run));
    let scenario = serde_json::to_string_pretty(&run.scenario).unwrap_or_default();
    let _ = write!(
        html,
        "<h2>Scenario</h2><pre>{}</pre></body></html>",
        escape(&scenario)
    );
    html
}

/// The HTML report of the idle-connection memory mode.
pub fn memory_html(memory: &MemorySummary) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>twitchy-perf: memory</title>\
         <style>{STYLE}</style></head><body><h1>Server memory per idle connection</h1>\
         <p>{} connections{}.</p><table><tr><th>target</th><th>open</th><th>failed</th>\
         <th>RSS before</th><th>RSS after</th><th>bytes/connection</th><th>source</th></tr>",
        memory.connections,
        if memory.joined_room {
            ", each joined to a room"
        } else {
            ""
        }
    );
    for t in &memory.targets {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            escape(&t.target),
            t.connections_open,
            t.connect_failed,
            t.rss_bytes_before,
            t.rss_bytes_after,
            t.bytes_per_connection,
            escape(&t.rss_source)
        );
    }
    html.push_str("</table></body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use crate::stats::{LatencySummary, TimelinePoint};

    fn run() -> RunSummary {
        let timeline = (0..5)
            .map(|t| TimelinePoint {
                t_s: t,
                sends: 100,
                deliveries: 2_000,
                acks: 100,
                latency_us_p50: 800,
                latency_us_p99: 3_000,
                latency_us_p999: 9_000,
                latency_us_max: 20_000,
            })
            .collect();
        RunSummary {
            kind: "scenario".into(),
            scenario: Scenario::preset("average", true).unwrap(),
            started_unix_s: 0,
            targets: vec![TargetSummary {
                target: "a<b".into(),
                latency: LatencySummary {
                    p99_us: 3_000,
                    ..Default::default()
                },
                latency_spectrum: vec![(0.0, 100), (50.0, 800), (99.9, 9_000), (100.0, 20_000)],
                timeline,
                ..Default::default()
            }],
            ratios: Vec::new(),
        }
    }

    #[test]
    fn report_contains_every_chart_and_escapes_names() {
        let html = run_html(&run());
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("a&lt;b p99"));
        assert!(!html.contains("a<b"));
        assert!(html.contains("latency distribution"));
    }

    #[test]
    fn charts_survive_empty_and_single_point_series() {
        let mut empty = run();
        empty.targets[0].timeline.clear();
        empty.targets[0].latency_spectrum.clear();
        for svg in [
            latency_over_time_svg(&empty),
            throughput_svg(&empty),
            distribution_svg(&empty),
        ] {
            assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
        let mut single = run();
        single.targets[0].timeline.truncate(1);
        let svg = throughput_svg(&single);
        assert!(svg.contains("<circle"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn percentile_axis_spreads_the_tail() {
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert!((percentile_x(100.0) - 5.0).abs() < 1e-9);
    }
}
