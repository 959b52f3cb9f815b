//! `rlrig world …`: the built-in world from the command line.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlrig_contract::Image;
use rlrig_sg::{MeanScores, SceneGraph};
use rlrig_world::sample::sample_rng;
use rlrig_world::{Canvas, WorldGraph, judge, parse, sample, sample_name};

/// The `world` subcommands.
#[derive(clap::Subcommand)]
pub enum WorldCommand {
    /// Samples satisfiable scene graphs and draws them: DIR/NNNNNN.png plus DIR/records.jsonl
    /// (one LAION-SG record per image, its `name` the PNG's file name).
    Sample {
        /// How many scenes.
        #[arg(long)]
        n: u64,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Canvas side in pixels.
        #[arg(long, default_value_t = Canvas::DEFAULT_SIZE)]
        size: u32,
        /// Sampler seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Draws the scene graphs of a LAION-SG JSON/JSONL file: DIR/<name or index>.png.
    Render {
        /// The records file (.json or .jsonl).
        records: PathBuf,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Canvas side in pixels.
        #[arg(long, default_value_t = Canvas::DEFAULT_SIZE)]
        size: u32,
        /// Seed of the placement choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Recovers the scene graph of each image with the oracle parser: one JSON line per image,
    /// a LAION-SG record whose `name` is the image's file name.
    Parse {
        /// PNG images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Scores images against their prompts with the oracle: per image and mean SG-IoU,
    /// Entity-IoU, Relation-IoU and relation accuracy, as JSON lines.
    Judge {
        /// The prompts (LAION-SG JSON/JSONL); each record's `name` is its image's file name.
        records: PathBuf,
        /// Directory holding the images.
        #[arg(long)]
        images: PathBuf,
    },
}

/// Runs a `world` subcommand.
pub fn run(cmd: WorldCommand) -> Result<i32> {
    match cmd {
        WorldCommand::Sample { n, out, size, seed } => sample_cmd(n, &out, size, seed),
        WorldCommand::Render {
            records,
            out,
            size,
            seed,
        } => render_cmd(&records, &out, size, seed),
        WorldCommand::Parse { images } => parse_cmd(&images),
        WorldCommand::Judge { records, images } => judge_cmd(&records, &images),
    }
}

fn sample_cmd(n: u64, out: &Path, size: u32, seed: u64) -> Result<i32> {
    let canvas = Canvas::new(size)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut records = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = sample(&canvas, seed, i);
        write_png(&out.join(sample_name(i)), &s.image)?;
        records.push(s.graph);
    }
    write_records(&out.join("records.jsonl"), &records)?;
    eprintln!(
        "wrote {n} scenes ({size}x{size}, seed {seed}) to {}",
        out.display()
    );
    Ok(0)
}

fn render_cmd(records: &Path, out: &Path, size: u32, seed: u64) -> Result<i32> {
    let canvas = Canvas::new(size)?;
    let graphs = rlrig_sg::read_records(records)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut failed = 0;
    for (i, g) in graphs.iter().enumerate() {
        let name = match &g.name {
            Some(name) => plain_file_name(name)
                .with_context(|| format!("record {i}"))?
                .to_string(),
            None => sample_name(i as u64),
        };
        match canvas.render(g, &mut sample_rng(seed, i as u64)) {
            Ok((image, _)) => write_png(&out.join(&name), &image)?,
            Err(e) => {
                failed += 1;
                eprintln!("{}: record {i} ({name}): {e}", records.display());
            }
        }
    }
    eprintln!(
        "rendered {} of {} records to {}",
        graphs.len() - failed,
        graphs.len(),
        out.display()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

fn parse_cmd(images: &[PathBuf]) -> Result<i32> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    for path in images {
        match read_png(path) {
            Ok(image) => {
                let mut g = parse(&image);
                g.name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                serde_json::to_writer(&mut out, &g)?;
                writeln!(out)?;
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn judge_cmd(records: &Path, images: &Path) -> Result<i32> {
    let graphs = rlrig_sg::read_records(records)?;
    // Refuse the whole file before reading any image when a prompt is outside the vocabulary.
    for (i, g) in graphs.iter().enumerate() {
        WorldGraph::from_scene_graph(g).with_context(|| {
            format!(
                "{}: record {i}: the oracle judges only prompts of the built-in world",
                records.display()
            )
        })?;
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut per_image = Vec::with_capacity(graphs.len());
    for (i, g) in graphs.iter().enumerate() {
        let Some(name) = &g.name else {
            bail!(
                "{}: record {i} has no `name` naming its image",
                records.display()
            )
        };
        let image = read_png(&images.join(plain_file_name(name)?))?;
        let j = judge(g, &image)
            .with_context(|| format!("{}: record {i} ({name})", records.display()))?;
        per_image.push((j.scores, j.relation_accuracy));
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"name": name, "scores": j.scores, "relation_accuracy": j.relation_accuracy}),
        )?;
        writeln!(out)?;
    }
    let mean = MeanScores::from_images(per_image);
    serde_json::to_writer(&mut out, &serde_json::json!({ "mean": mean }))?;
    writeln!(out)?;
    Ok(0)
}

fn plain_file_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        bail!("`name` {name:?} is not a plain file name");
    }
    Ok(name)
}

fn write_png(path: &Path, image: &Image) -> Result<()> {
    let bytes = image
        .to_png()
        .with_context(|| format!("encoding {}", path.display()))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn read_png(path: &Path) -> Result<Image> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Image::from_png(&bytes).with_context(|| format!("decoding {}", path.display()))
}

fn write_records(path: &Path, records: &[SceneGraph]) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    rlrig_sg::write_jsonl(io::BufWriter::new(file), records)
        .with_context(|| format!("writing {}", path.display()))
}
