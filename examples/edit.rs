//! Applies an edit prompt to an image with the trained Editor and writes before | after,
//! enlarged, as one PNG:
//!
//! ```sh
//! rlrig world render "red circle left of blue square" --out before.png
//! cargo run --release --example edit -- before.png "move the red circle to the right of the blue square" out.png
//! ```
//!
//! Options after the three arguments: `--weights FILE` (default weights/editor.safetensors),
//! `--seed N`, `--scale N` (default 8), `--guidance G` (classifier-free guidance on the edit
//! prompt, default 1).

use rlrig_contract::{EditRequest, Editor, Image};
use rlrig_models::{NeuralEditor, NeuralSettings};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, prompt, output] = [0, 1, 2].map(|i| args.get(i).cloned());
    let (Some(input), Some(prompt), Some(output)) = (input, prompt, output) else {
        return Err(
            "usage: edit IMAGE.png \"EDIT PROMPT\" OUT.png [--weights FILE] [--seed N] [--scale N]"
                .into(),
        );
    };
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let weights = opt("--weights").unwrap_or_else(|| "weights/editor.safetensors".into());
    let seed: u64 = opt("--seed").map_or(Ok(0), |s| s.parse())?;
    let scale: u32 = opt("--scale").map_or(Ok(8), |s| s.parse())?;
    let guidance: f64 = opt("--guidance").map_or(Ok(1.0), |s| s.parse())?;
    let before = Image::from_png(&std::fs::read(&input)?)?;
    let settings = NeuralSettings {
        guidance,
        ..NeuralSettings::with_weights(weights)
    };
    let mut editor = NeuralEditor::new(&settings, "cpu")?;
    let after = editor
        .edit(&[EditRequest {
            explore: false,
            image: before.clone(),
            edit_prompt: prompt,
            seed,
        }])
        .map_err(|e| e.0)?
        .remove(0);
    let (w, h) = (before.width(), before.height());
    let mut out = Image::filled((2 * w + 1) * scale, h * scale, [128, 128, 128]);
    for (k, img) in [&before, &after].into_iter().enumerate() {
        for y in 0..h * scale {
            for x in 0..w * scale {
                out.put(
                    k as u32 * (w + 1) * scale + x,
                    y,
                    img.get(x / scale, y / scale),
                );
            }
        }
    }
    std::fs::write(&output, out.to_png()?)?;
    println!("{output}: before | after");
    Ok(())
}
