//! `runs/<name>/report.html`: one self-contained page per run — the oracle metrics per round,
//! the scores of `rlrig eval` (`eval.json`, the oracle's or a VLM judge's), the training curves (reward, KL, clip fraction; held-out SG-IoU) when the run trained, and
//! per prompt the image chain with the Checker's reflections and the Policy's edit prompts.
//! Images are inline PNGs (`data:` URLs), plots inline SVG; nothing is fetched.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use rlrig_contract::{CheckReport, RelationVerdict, StepOutput, Trajectory};
use rlrig_sg::{Extraction, SceneGraph, Triple};
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

/// A verdict as a mark people read at a glance: ✓ held, ✗ violated, ? cannot tell.
fn mark(v: Option<RelationVerdict>) -> &'static str {
    match v {
        Some(RelationVerdict::Holds) => "<td class=\"ok\" title=\"held\">✓</td>",
        Some(RelationVerdict::Violated) => "<td class=\"bad\" title=\"violated\">✗</td>",
        Some(RelationVerdict::CannotTell) => "<td class=\"unk\" title=\"cannot tell\">?</td>",
        None => "<td>-</td>",
    }
}

/// The prompt's relations as triples, one per relation in the prompt's order (the order the
/// Checker's verdicts follow); an endpoint the prompt lacks is named by its item id.
fn prompt_triples(prompt: &SceneGraph) -> Vec<Triple> {
    let node = |id: u64| {
        prompt
            .items
            .iter()
            .find(|it| it.item_id == id)
            .map_or_else(|| format!("item {id}"), |it| it.node_text())
    };
    prompt
        .relations
        .iter()
        .map(|r| Triple {
            subject: node(r.item1),
            predicate: r.relation.clone(),
            object: node(r.item2),
        })
        .collect()
}

/// Per prompt relation, the Checker's verdict beside the oracle's (when the prompt is in the
/// world's vocabulary): a small table under the image the Checker reported on.
fn relation_table(
    out: &mut String,
    triples: &[Triple],
    report: &CheckReport,
    oracle: Option<&Extraction>,
) {
    if triples.is_empty() {
        return;
    }
    out.push_str("<table class=\"rels\"><tr><th>relation</th><th>Checker</th>");
    if oracle.is_some() {
        out.push_str("<th>oracle</th>");
    }
    out.push_str("</tr>");
    for (i, t) in triples.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td class=\"rel\">{}</td>{}",
            esc(&t.to_string()),
            mark(report.relations.get(i).copied())
        );
        if let Some(found) = oracle {
            out.push_str(mark(Some(if found.triples.contains(t) {
                RelationVerdict::Holds
            } else {
                RelationVerdict::Violated
            })));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
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
    // `final_`: the key's name in runs written before it became `final`.
    let fin = if m["final"].is_object() {
        &m["final"]
    } else {
        &m["final_"]
    };
    if fin.is_object() {
        row(out, "final", fin);
    }
    out.push_str("</table>");
}

/// The table of `eval.json` (`rlrig eval`): who judged, and per round and final the images
/// judged, those whose judgement failed, and each mean with its 95 % interval.
fn eval_table(out: &mut String, e: &serde_json::Value) {
    let Some(rounds) = e["rounds"].as_array() else {
        return;
    };
    let judge = e["judge"].as_str().unwrap_or("oracle");
    let _ = write!(
        out,
        "<h2>Judged by {}</h2><p>From <code>eval.json</code>: means with 95 % bootstrap intervals over prompts.</p>\
         <table class=\"eval\"><tr><th>round</th><th>judged</th><th>failed</th><th>SG-IoU</th><th>Entity-IoU</th>\
         <th>Relation-IoU</th><th>relation accuracy</th></tr>",
        esc(if judge == "oracle" {
            "the oracle"
        } else {
            judge
        })
    );
    let row = |out: &mut String, label: &str, s: &serde_json::Value| {
        let cell = |m: &str| match (
            s[m]["mean"].as_f64(),
            s[m]["ci95"][0].as_f64(),
            s[m]["ci95"][1].as_f64(),
        ) {
            (Some(a), Some(lo), Some(hi)) => format!("{a:.4} [{lo:.4}, {hi:.4}]"),
            _ => "-".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{label}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s["judged"],
            if s["failed"].as_u64().unwrap_or(0) > 0 {
                " class=\"bad\""
            } else {
                ""
            },
            s["failed"],
            cell("sg_iou"),
            cell("entity_iou"),
            cell("relation_iou"),
            cell("relation_accuracy")
        );
    };
    for (r, s) in rounds.iter().enumerate() {
        row(out, &r.to_string(), s);
    }
    if e["final"].is_object() {
        row(out, "final", &e["final"]);
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
         .step{{width:210px;font-size:12px}}.step img{{width:128px;height:128px;image-rendering:pixelated;border:1px solid #999}}\
         .edit{{color:#05a}}table.rels{{margin:4px 0;font-size:11px}}table.rels td,table.rels th{{padding:1px 4px}}\
         td.rel{{text-align:left}}td.ok{{color:#080;text-align:center}}td.bad{{color:#c00;text-align:center}}td.unk{{color:#888;text-align:center}}\
         .step table.rels{{width:100%}}.refl{{color:#333}}section{{border-top:1px solid #ddd;padding:0.5em 0}}</style></head><body>\
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
    if let Ok(text) = std::fs::read_to_string(dir.join("eval.json"))
        && let Ok(e) = serde_json::from_str::<serde_json::Value>(&text)
    {
        eval_table(&mut out, &e);
    }
    training_section(&mut out, dir);
    let store_dir = dir.join("store");
    if store_dir.is_dir() {
        let store = TrajectoryStore::open(&store_dir)?;
        // Only the trajectories shown are read: a long run's report needs no more memory.
        let stored = store.next_seq()?;
        let shown = store.committed_after(None, SHOWN)?;
        let _ = write!(out, "<h2>Trajectories</h2><p>{stored} stored");
        if stored > SHOWN as u64 {
            let _ = write!(out, "; the first {SHOWN} are shown");
        }
        out.push_str(". Branches the trajectory did not go on from are left out.</p>");
        for (_, t) in shown.iter() {
            trajectory_section(&mut out, t)?;
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

/// The training curves and the held-out SG-IoU by weights version, when the run has them.
fn training_section(out: &mut String, dir: &Path) {
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
}

/// One trajectory: its prompt, outcome and the chain of images, reports and edits on its line.
fn trajectory_section(out: &mut String, t: &Trajectory) -> Result<()> {
    let _ = write!(
        out,
        "<section><h3>#{} — {}</h3><p>{}</p><div class=\"chain\">",
        t.id,
        esc(&t.prompt.prompt()),
        esc(&crate::chain::outcome_text(t))
    );
    let triples = prompt_triples(&t.prompt);
    let mut image = None;
    let mut cell = String::new();
    for s in t.steps.iter().filter(|s| s.on_line()) {
        match &s.output {
            StepOutput::Image(img) => {
                image = Some(img);
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
                // The oracle's judgement, as src/run.rs scores the image: the parsed
                // scene graph narrowed to what a judge given the prompt could answer.
                let oracle = image
                    .and_then(|img| rlrig_world::oracle::judge(&t.prompt, img).ok())
                    .map(|j| Extraction::from(&j.parsed).as_judged_against(&t.prompt));
                relation_table(&mut cell, &triples, r, oracle.as_ref());
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
    Ok(())
}
