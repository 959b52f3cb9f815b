//! `runs/<name>/report.html`: one self-contained page per run — the oracle metrics per round,
//! the training curves (reward, KL, clip fraction; held-out SG-IoU) when the run trained, and
//! per prompt the image chain with the Checker's reflections and the Policy's edit prompts.
//! Images are inline PNGs (`data:` URLs), plots inline SVG; nothing is fetched.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use rlrig_contract::StepOutput;
use rlrig_store::TrajectoryStore;

/// Trajectories shown in full; the rest are counted.
const SHOWN: usize = 60;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn png(img: &rlrig_contract::Image) -> Result<String> {
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(img.to_png()?)
    ))
}

fn metrics_table(out: &mut String, m: &serde_json::Value) {
    let Some(rounds) = m["rounds"].as_array().filter(|r| !r.is_empty()) else {
        return;
    };
    out.push_str("<h2>Oracle metrics</h2><table><tr><th>round</th><th>n</th><th>SG-IoU</th><th>Entity-IoU</th><th>Relation-IoU</th><th>relation accuracy</th></tr>");
    let row = |out: &mut String, label: &str, s: &serde_json::Value| {
        let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.4}"));
        let _ = write!(
            out,
            "<tr><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s["n"],
            f(&s["mean"]["sg_iou"]),
            f(&s["mean"]["entity_iou"]),
            f(&s["mean"]["relation_iou"]),
            f(&s["relation_accuracy"])
        );
    };
    for r in rounds {
        row(out, &r["round"].to_string(), r);
    }
    if m["final_"].is_object() {
        row(out, "final", &m["final_"]);
    }
    out.push_str("</table>");
}

/// Writes `report.html` into a run directory; returns its path.
pub fn write(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().to_string());
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>rlrig report: {n}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}.chain{{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}}\
         .step{{width:150px;font-size:12px}}.step img{{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}}\
         .edit{{color:#05a}}.refl{{color:#333}}section{{border-top:1px solid #ddd;padding:0.5em 0}}</style></head><body>\
         <h1>rlrig run <code>{n}</code></h1>",
        n = esc(&name)
    );
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.json"))
        && let Ok(m) = serde_json::from_str::<serde_json::Value>(&text)
    {
        if let (Some(done), Some(failed)) = (m["done"].as_u64(), m["failed"].as_u64()) {
            let _ = write!(
                out,
                "<p>{done} trajectories done, {failed} failed{}.</p>",
                if failed > 0 {
                    "; the metrics cover the done ones"
                } else {
                    ""
                }
            );
        }
        metrics_table(&mut out, &m);
    }
    if let Ok(m) = rlrig_train::read_metrics(&dir.join("metrics.jsonl"))
        && !m.is_empty()
    {
        out.push_str("<h2>Training</h2>");
        match crate::plot::training_curves_svg(&m) {
            Ok(svg) => out.push_str(&svg),
            Err(e) => {
                let _ = write!(out, "<p>(no plot: {})</p>", esc(&e));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("eval.jsonl")) {
        let points: Vec<(u64, f64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some((
                    v["version"].as_u64()?,
                    v["final"]["mean"]["sg_iou"].as_f64()?,
                ))
            })
            .collect();
        if !points.is_empty() {
            out.push_str("<h2>Held-out SG-IoU by weights version</h2>");
            match crate::plot::curve_svg("held-out SG-IoU (oracle)", "weights version", &points) {
                Ok(svg) => out.push_str(&svg),
                Err(e) => {
                    let _ = write!(out, "<p>(no plot: {})</p>", esc(&e));
                }
            }
        }
    }
    let store_dir = dir.join("store");
    if store_dir.is_dir() {
        let store = TrajectoryStore::open(&store_dir)?;
        let all = store.committed_after(None, usize::MAX)?;
        let _ = write!(out, "<h2>Trajectories</h2><p>{} stored", all.len());
        if all.len() > SHOWN {
            let _ = write!(out, "; the first {SHOWN} are shown");
        }
        out.push_str(". Branches the trajectory did not go on from are left out.</p>");
        for (_, t) in all.iter().take(SHOWN) {
            let _ = write!(
                out,
                "<section><h3>#{} — {}</h3><p>{}</p><div class=\"chain\">",
                t.id,
                esc(&t.prompt.prompt()),
                esc(&crate::trajectories_cmd::outcome_text(t))
            );
            let mut cell = String::new();
            for s in t.steps.iter().filter(|s| s.on_line()) {
                match &s.output {
                    StepOutput::Image(img) => {
                        if !cell.is_empty() {
                            let _ = write!(out, "<div class=\"step\">{cell}</div>");
                        }
                        cell = format!(
                            "<img alt=\"round {} {}\" src=\"{}\"><br>round {} · {}",
                            s.round,
                            esc(&s.actor),
                            png(img)?,
                            s.round,
                            esc(&s.actor)
                        );
                    }
                    StepOutput::Report(r) => {
                        let _ = write!(
                            cell,
                            "<div class=\"refl\">score {:.2}: {}</div>",
                            r.score,
                            esc(&r.reflection)
                        );
                    }
                    StepOutput::Edit(e) => {
                        let _ = write!(
                            cell,
                            "<div class=\"edit\">→ “{}” (v{})</div>",
                            esc(&e.edit_prompt),
                            e.policy_version
                        );
                    }
                }
            }
            if !cell.is_empty() {
                let _ = write!(out, "<div class=\"step\">{cell}</div>");
            }
            out.push_str("</div></section>");
        }
    }
    // Says in the title whether every image decoded (what the report test reads).
    out.push_str(
        "<script>window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);\
         var ok=i.filter(function(x){return x.complete&&x.naturalWidth>0;}).length;\
         document.title+=' ['+ok+'/'+i.length+' images]';});</script></body></html>\n",
    );
    let path = dir.join("report.html");
    let tmp = dir.join("report.html.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
