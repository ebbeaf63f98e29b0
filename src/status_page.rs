//! `batch-embed status OUTPUT --serve ADDR`: a small web page for the fleet, rebuilt from the
//! output folder on every request: the worker table, fleet throughput over time (inline SVG, no
//! scripts or network needed), the ETA; refreshed by the browser every few seconds. The same
//! data as JSON at `/status.json`.

use std::fmt::Write;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tiny_http::{Header, Response, Server};

use crate::status::{collect, eta_unknown, human_duration, FleetStatus};
use crate::storage::Location;

/// Seconds between the page's refreshes.
const REFRESH_S: u64 = 5;

pub fn serve(output: &Location, addr: &str, stale: Duration) -> Result<()> {
    let server = Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server.server_addr().to_ip().map(|a| a.to_string()).unwrap_or_else(|| addr.to_string());
    eprintln!("batch-embed status: serving http://{bound}/ (JSON at /status.json); Ctrl-C to stop");
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("/").to_string();
        let status = collect(output, stale);
        let (body, content_type, code) = match (path.as_str(), status) {
            ("/status.json", Ok(s)) => (serde_json::to_string_pretty(&s)?, "application/json", 200),
            ("/", Ok(s)) | ("/index.html", Ok(s)) => (page(&s), "text/html; charset=utf-8", 200),
            ("/" | "/index.html" | "/status.json", Err(e)) => {
                (format!("{e:#}\n"), "text/plain; charset=utf-8", 503)
            }
            _ => ("not found\n".to_string(), "text/plain; charset=utf-8", 404),
        };
        let header = Header::from_bytes("Content-Type", content_type).expect("valid header");
        let _ = request.respond(Response::from_string(body).with_header(header).with_status_code(code));
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The whole page for one status.
pub fn page(s: &FleetStatus) -> String {
    let pct = if s.rows_owned > 0 { 100.0 * s.rows_done as f64 / s.rows_owned as f64 } else { 100.0 };
    let eta = s.eta_s.map_or(eta_unknown(s).to_string(), human_duration);
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>batch-embed: {pct:.1}% of {output}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
.summary span {{ display: inline-block; margin-right: 24px; }}
.bar {{ height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 8px 0 16px; max-width: 800px; }}
.bar div {{ height: 100%; background: #16a34a; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
th, td {{ padding: 4px 12px; text-align: right; border-bottom: 1px solid #e5e7eb; }}
th {{ background: #f3f4f6; }}
td.state {{ text-align: left; font-weight: 600; }}
.done {{ color: #15803d; }} .running {{ color: #1d4ed8; }} .stale {{ color: #b45309; }}
.failed {{ color: #b91c1c; }} .interrupted {{ color: #7c3aed; }} .not-started {{ color: #6b7280; }}
</style></head><body>
<h1>batch-embed — {output}</h1>
<div class="summary">
<span id="progress"><b>{pct:.1}%</b> ({done_rows} / {owned} rows)</span>
<span id="rate"><b>{rate:.0}</b> rows/s, {tps:.0} tokens/s</span>
<span id="eta">ETA <b>{eta}</b></span>
<span id="failures">{failed_rows} failed rows</span>
<span id="reused">{reused_rows} reused rows</span>
</div>
<div class="bar"><div style="width: {pct:.2}%"></div></div>
<div class="summary"><span>{n} workers: {done} done, {running} running, {stale} stale, {interrupted} interrupted, {failed} failed, {not_started} not started</span></div>
"#,
        output = escape(&s.output),
        done_rows = s.rows_done,
        owned = s.rows_owned,
        rate = s.rows_per_s,
        tps = s.tokens_per_s,
        failed_rows = s.rows_failed,
        reused_rows = s.rows_reused,
        n = s.num_workers,
        done = s.done,
        running = s.running,
        stale = s.stale,
        interrupted = s.interrupted,
        failed = s.failed,
        not_started = s.not_started,
    );
    html.push_str(&chart(&s.history));
    html.push_str(
        "<table id=\"workers\"><tr><th>worker</th><th>state</th><th>rows done</th><th>owned</th>\
         <th>failed</th><th>reused</th><th>rows/s</th><th>updated</th><th>host</th><th>error</th></tr>\n",
    );
    for w in &s.workers {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"state {}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.worker_id,
            w.state.replace(' ', "-"),
            w.state,
            w.rows_done,
            w.rows_owned,
            w.rows_failed,
            w.rows_reused,
            w.rows_per_s,
            w.updated_text(),
            escape(w.host.as_deref().unwrap_or("-")),
            escape(w.error.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table>\n</body></html>\n");
    html
}

/// Fleet throughput over time as an SVG line chart (rows/s between consecutive samples).
fn chart(history: &[(u64, u64)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 200.0;
    const PAD: f64 = 40.0;
    let rates: Vec<(u64, f64)> = history
        .windows(2)
        .filter(|p| p[1].0 > p[0].0)
        .map(|p| (p[1].0, p[1].1.saturating_sub(p[0].1) as f64 / (p[1].0 - p[0].0) as f64))
        .collect();
    let mut svg = format!(
        "<h2 style=\"font-size:16px\">Fleet throughput (rows/s)</h2>\n<svg id=\"throughput\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\n\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#f9fafb\" stroke=\"#e5e7eb\"/>\n"
    );
    if rates.len() < 2 {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#6b7280\">not enough samples yet (workers record one every 30 s)</text>",
            W / 2.0,
            H / 2.0
        );
    } else {
        let (t0, t1) = (rates[0].0 as f64, rates[rates.len() - 1].0 as f64);
        let top = rates.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9) * 1.1;
        let x = |t: f64| PAD + (t - t0) / (t1 - t0).max(1.0) * (W - 2.0 * PAD);
        let y = |v: f64| H - PAD / 2.0 - v / top * (H - PAD);
        let points: Vec<String> =
            rates.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t as f64), y(v))).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"3\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            svg,
            "<text x=\"4\" y=\"14\" fill=\"#374151\">{:.0}</text><text x=\"4\" y=\"{}\" fill=\"#374151\">0</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#374151\">last {}</text>",
            top,
            H - 6.0,
            W - 4.0,
            H - 6.0,
            human_duration(t1 - t0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
