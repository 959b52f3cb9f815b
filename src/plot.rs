//! Training curves as SVG (plotters): reward mean (of the groups trained on, and before
//! equal-reward filtering), the share of groups filtered, KL and clip fraction per learner step, and
//! single curves for the HTML report.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use rlrig_train::StepMetrics;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn curve(area: &Area, title: &str, x_desc: &str, values: &[(u64, f64)]) -> Result<(), String> {
    let last = values.iter().map(|v| v.0).max().unwrap_or(1).max(1);
    let first = values.iter().map(|v| v.0).min().unwrap_or(0).min(last - 1);
    let lo = values.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
    let hi = values.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(first..last, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(values.iter().copied(), &BLUE))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A panel's title and the value it plots.
type Series = (&'static str, fn(&StepMetrics) -> f64);

fn panels(root: Area, m: &[StepMetrics]) -> Result<(), String> {
    if m.is_empty() {
        return Err("no learner steps to plot".into());
    }
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let series: [Series; 5] = [
        ("reward mean, groups trained on (the flow's reward)", |s| {
            s.learn.reward_mean
        }),
        (
            "reward mean, every fresh group (before equal-reward filtering)",
            |s| s.reward_mean_all,
        ),
        ("share of fresh groups filtered (all rewards equal)", |s| {
            // The trainer passes the informative groups on and counts the others as filtered.
            let fresh = s.learn.groups + s.learn.filtered_groups;
            if fresh == 0 {
                0.0
            } else {
                s.learn.filtered_groups as f64 / fresh as f64
            }
        }),
        (
            "KL to the reference (per token / per denoising step)",
            |s| s.learn.kl,
        ),
        ("clip fraction", |s| s.learn.clip_fraction),
    ];
    for (area, (title, f)) in root.split_evenly((5, 1)).iter().zip(series) {
        let values: Vec<(u64, f64)> = m.iter().map(|s| (s.step, f(s))).collect();
        curve(area, title, "learner step", &values)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws `metrics.svg`: five panels sharing the step axis.
pub fn training_curves(m: &[StepMetrics], path: &Path) -> Result<(), String> {
    panels(SVGBackend::new(path, (960, 1100)).into_drawing_area(), m)
}

/// The same panels as an SVG string.
pub fn training_curves_svg(m: &[StepMetrics]) -> Result<String, String> {
    let mut svg = String::new();
    panels(
        SVGBackend::with_string(&mut svg, (960, 1100)).into_drawing_area(),
        m,
    )?;
    Ok(svg)
}

/// One curve as an SVG string.
pub fn curve_svg(title: &str, x_desc: &str, values: &[(u64, f64)]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        curve(&root, title, x_desc, values)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
