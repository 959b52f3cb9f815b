//! Training curves as an SVG (plotters): reward mean, KL and clip fraction per learner step.

use std::path::Path;

use plotters::prelude::*;
use rlrig_train::StepMetrics;

/// Draws `metrics.svg`: three panels sharing the step axis.
pub fn training_curves(m: &[StepMetrics], path: &Path) -> Result<(), String> {
    if m.is_empty() {
        return Err("no learner steps to plot".into());
    }
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let series: [(&str, fn(&StepMetrics) -> f64); 3] = [
        ("reward mean (Checker score after the edit)", |s| {
            s.learn.reward_mean
        }),
        ("KL to the reference (k3, per token)", |s| s.learn.kl),
        ("clip fraction", |s| s.learn.clip_fraction),
    ];
    let last = m.last().map_or(1, |s| s.step).max(1);
    for (area, (title, f)) in panels.iter().zip(series) {
        let values: Vec<(u64, f64)> = m.iter().map(|s| (s.step, f(s))).collect();
        let lo = values.iter().map(|v| v.1).fold(f64::INFINITY, f64::min);
        let hi = values.iter().map(|v| v.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.1).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..last, (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("learner step")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(values, &BLUE))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
