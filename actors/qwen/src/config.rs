//! Qwen2.5-VL's `config.json`: the text settings at the top level (transformers 4.x, as the
//! published checkpoints ship them) or under `text_config` (transformers 5.x), the vision
//! tower's under `vision_config`. Keys that change what the model computes and that rlrig does
//! not build (sliding-window attention, other rotary scalings, other activations, Qwen2-VL's
//! vision tower) are refused by name; bookkeeping keys are ignored; any other key is refused.

use std::path::Path;

use serde_json::{Map, Value};

use crate::QwenError;
use rlrig_hf::HfError;

/// The vision tower's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// Vision blocks.
    pub depth: usize,
    /// Width of the patch states.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Image channels (3).
    pub in_channels: usize,
    /// Side of a patch in pixels (14).
    pub patch_size: usize,
    /// Frames per patch (2; an image is repeated).
    pub temporal_patch_size: usize,
    /// Side of the square of patches the merger joins into one token (2).
    pub spatial_merge_size: usize,
    /// Side of an attention window in pixels (112).
    pub window_size: usize,
    /// Width of the merged tokens (the decoder's width).
    pub out_hidden_size: usize,
    /// Blocks that attend over the whole image; the others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
    /// Temporal position step per second of video (images do not use it).
    pub tokens_per_second: usize,
    /// Base of the 2-D rotary frequencies.
    pub rope_theta: f64,
}

/// The Qwen2 decoder's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the token states.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key / value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// How many rotary frequencies the temporal, height and width positions take.
    pub mrope_section: [usize; 3],
    /// The longest sequence the positions are meant for.
    pub max_position_embeddings: usize,
}

impl TextConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A Qwen2.5-VL model's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct QwenConfig {
    /// The decoder.
    pub text: TextConfig,
    /// The vision tower.
    pub vision: VisionConfig,
    /// The placeholder token an image's merged patches replace.
    pub image_token_id: u32,
    /// `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>`.
    pub vision_end_token_id: u32,
    /// The language head is the token embedding.
    pub tie_word_embeddings: bool,
    /// Tokens that end a generation.
    pub eos_token_ids: Vec<u32>,
}

/// Keys that do not change what the model computes.
const IGNORED: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "use_cache",
    "bos_token_id",
    "pad_token_id",
    "vision_token_id",
    "video_token_id",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "name_or_path",
    "_name_or_path",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "problem_type",
    "is_encoder_decoder",
    "tokenizer_class",
    "max_window_layers",
    "sliding_window",
    "attention_dropout",
];

/// Reads the object `map`, taking keys as they are asked for; what is left is checked.
struct Keys<'a> {
    map: Map<String, Value>,
    path: &'a Path,
    prefix: &'static str,
}

impl<'a> Keys<'a> {
    fn bad(&self, key: &str, message: impl std::fmt::Display) -> QwenError {
        QwenError::File(HfError::Config {
            path: self.path.to_owned(),
            message: format!("`{}{key}`: {message}", self.prefix),
        })
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn usize(&mut self, key: &str, default: Option<usize>) -> Result<usize, QwenError> {
        match self.take(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(key, format!("{v} is not a non-negative integer"))),
            None => default.ok_or_else(|| self.bad(key, "missing")),
        }
    }

    fn f64(&mut self, key: &str, default: Option<f64>) -> Result<f64, QwenError> {
        match self.take(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(key, format!("{v} is not a number"))),
            None => default.ok_or_else(|| self.bad(key, "missing")),
        }
    }

    fn bool(&mut self, key: &str) -> Result<bool, QwenError> {
        match self.take(key) {
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(self.bad(key, format!("{v} is not true or false"))),
            None => Ok(false),
        }
    }

    /// A key that must have `allowed` (or be absent).
    fn only(&mut self, key: &str, allowed: &[&str]) -> Result<(), QwenError> {
        if let Some(v) = self.take(key) {
            let s = v.as_str().unwrap_or_default();
            if !allowed.contains(&s) {
                return Err(self.bad(
                    key,
                    format!("{v} is not supported (supported: {allowed:?})"),
                ));
            }
        }
        Ok(())
    }

    /// Every key not taken must be bookkeeping.
    fn finish(self) -> Result<(), QwenError> {
        for key in self.map.keys() {
            if !IGNORED.contains(&key.as_str()) && !key.starts_with('_') {
                return Err(self.bad(key, "unsupported key"));
            }
        }
        Ok(())
    }
}

fn object(v: Value, path: &Path, key: &str) -> Result<Map<String, Value>, QwenError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(QwenError::File(HfError::Config {
            path: path.to_owned(),
            message: format!("`{key}`: {other} is not an object"),
        })),
    }
}

fn ids(v: Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl QwenConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, QwenError> {
        let value: Value = crate::read_json(path)?;
        Self::from_value(value, path)
    }

    /// Reads and checks a parsed `config.json` (`path` names it in errors).
    pub fn from_value(value: Value, path: &Path) -> Result<Self, QwenError> {
        let mut top = Keys {
            map: object(value, path, "")?,
            path,
            prefix: "",
        };
        match top.map.get("model_type").and_then(Value::as_str) {
            Some("qwen2_5_vl") | None => {}
            Some(other) => {
                return Err(top.bad(
                    "model_type",
                    format!("{other:?} is not supported (only \"qwen2_5_vl\": Qwen2-VL's vision tower differs)"),
                ));
            }
        }
        let vision = object(
            top.take("vision_config")
                .ok_or_else(|| top.bad("vision_config", "missing"))?,
            path,
            "vision_config",
        )?;
        let vision = vision_config(Keys {
            map: vision,
            path,
            prefix: "vision_config.",
        })?;
        let image_token_id = top.usize("image_token_id", Some(151655))? as u32;
        let vision_start_token_id = top.usize("vision_start_token_id", Some(151652))? as u32;
        let vision_end_token_id = top.usize("vision_end_token_id", Some(151653))? as u32;
        let mut tie = top.bool("tie_word_embeddings")?;
        let mut eos = ids(top.take("eos_token_id"));
        let text = match top.take("text_config") {
            Some(t) => {
                let mut keys = Keys {
                    map: object(t, path, "text_config")?,
                    path,
                    prefix: "text_config.",
                };
                tie |= keys.bool("tie_word_embeddings")?;
                let more = ids(keys.take("eos_token_id"));
                if eos.is_empty() {
                    eos = more;
                }
                let text = text_config(&mut keys)?;
                keys.finish()?;
                // transformers 5 keeps copies of some text keys at the top level.
                for k in ["vocab_size", "hidden_size", "rope_scaling", "rope_theta"] {
                    top.map.remove(k);
                }
                text
            }
            None => text_config(&mut top)?,
        };
        top.finish()?;
        if eos.is_empty() {
            eos.push(151645);
        }
        let config = QwenConfig {
            text,
            vision,
            image_token_id,
            vision_start_token_id,
            vision_end_token_id,
            tie_word_embeddings: tie,
            eos_token_ids: eos,
        };
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), QwenError> {
        let bad = |message: String| {
            QwenError::File(HfError::Config {
                path: path.to_owned(),
                message,
            })
        };
        let t = &self.text;
        let v = &self.vision;
        if t.num_attention_heads == 0
            || !t.hidden_size.is_multiple_of(t.num_attention_heads)
            || t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            return Err(bad(format!(
                "`hidden_size` {} / `num_attention_heads` {} / `num_key_value_heads` {}: the heads must divide the width and the key-value heads the heads",
                t.hidden_size, t.num_attention_heads, t.num_key_value_heads
            )));
        }
        if !t.head_dim().is_multiple_of(2)
            || t.mrope_section.iter().sum::<usize>() != t.head_dim() / 2
        {
            return Err(bad(format!(
                "`mrope_section` {:?} must add up to half the head width ({})",
                t.mrope_section,
                t.head_dim() / 2
            )));
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !(v.hidden_size / v.num_heads).is_multiple_of(4)
        {
            return Err(bad(format!(
                "`vision_config.hidden_size` {} / `num_heads` {}: the head width must be a multiple of 4",
                v.hidden_size, v.num_heads
            )));
        }
        let unit = v.spatial_merge_size * v.patch_size;
        if unit == 0 || !v.window_size.is_multiple_of(unit) || v.window_size < unit {
            return Err(bad(format!(
                "`vision_config.window_size` {} must be a multiple of patch_size × spatial_merge_size ({unit})",
                v.window_size
            )));
        }
        if let Some(i) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(bad(format!(
                "`vision_config.fullatt_block_indexes` names block {i} of {}",
                v.depth
            )));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(bad(format!(
                "`vision_config.out_hidden_size` {} differs from the decoder's width {}",
                v.out_hidden_size, t.hidden_size
            )));
        }
        Ok(())
    }
}

fn rope(keys: &mut Keys, default_theta: f64) -> Result<(f64, Option<Vec<usize>>), QwenError> {
    let mut theta = keys.f64("rope_theta", Some(default_theta))?;
    let mut section = None;
    let scaling = keys.take("rope_scaling");
    let params = keys.take("rope_parameters");
    for (name, v) in [("rope_scaling", scaling), ("rope_parameters", params)] {
        let Some(v) = v else { continue };
        let mut r = Keys {
            map: object(v, keys.path, name)?,
            path: keys.path,
            prefix: "rope_parameters.",
        };
        for k in ["type", "rope_type"] {
            r.only(k, &["mrope", "default", "axial"])?;
        }
        theta = r.f64("rope_theta", Some(theta))?;
        if let Some(s) = r.take("mrope_section") {
            let s: Vec<usize> = serde_json::from_value(s.clone())
                .map_err(|_| r.bad("mrope_section", format!("{s} is not three integers")))?;
            section = Some(s);
        }
        r.finish()?;
    }
    Ok((theta, section))
}

fn text_config(k: &mut Keys) -> Result<TextConfig, QwenError> {
    k.only("hidden_act", &["silu"])?;
    if k.bool("use_sliding_window")? {
        return Err(k.bad("use_sliding_window", "true is not supported"));
    }
    if let Some(types) = k.take("layer_types")
        && types
            .as_array()
            .is_none_or(|a| a.iter().any(|t| t.as_str() != Some("full_attention")))
    {
        return Err(k.bad(
            "layer_types",
            "only \"full_attention\" layers are supported",
        ));
    }
    let hidden_size = k.usize("hidden_size", None)?;
    let num_attention_heads = k.usize("num_attention_heads", None)?;
    if let Some(h) = k.take("head_dim")
        && h.as_u64() != Some((hidden_size / num_attention_heads.max(1)) as u64)
    {
        return Err(k.bad(
            "head_dim",
            format!("{h} differs from hidden_size / num_attention_heads"),
        ));
    }
    let (rope_theta, section) = rope(k, 1e6)?;
    let section = section.unwrap_or_else(|| vec![16, 24, 24]);
    let mrope_section: [usize; 3] = section.as_slice().try_into().map_err(|_| {
        k.bad(
            "rope_scaling.mrope_section",
            format!("{section:?} is not three integers"),
        )
    })?;
    Ok(TextConfig {
        vocab_size: k.usize("vocab_size", None)?,
        hidden_size,
        intermediate_size: k.usize("intermediate_size", None)?,
        num_hidden_layers: k.usize("num_hidden_layers", None)?,
        num_attention_heads,
        num_key_value_heads: k.usize("num_key_value_heads", Some(num_attention_heads))?,
        rms_norm_eps: k.f64("rms_norm_eps", Some(1e-6))?,
        rope_theta,
        mrope_section,
        max_position_embeddings: k.usize("max_position_embeddings", Some(128_000))?,
    })
}

fn vision_config(mut k: Keys) -> Result<VisionConfig, QwenError> {
    k.only("hidden_act", &["silu"])?;
    for qwen2_vl in ["embed_dim", "mlp_ratio"] {
        if k.take(qwen2_vl).is_some() {
            return Err(k.bad(
                qwen2_vl,
                "a Qwen2-VL vision tower (LayerNorm, GELU MLP) is not supported, only Qwen2.5-VL's",
            ));
        }
    }
    let patch = k.usize("patch_size", Some(14))?;
    let spatial = k.usize("spatial_patch_size", Some(patch))?;
    if spatial != patch {
        return Err(k.bad("spatial_patch_size", "differs from patch_size"));
    }
    let in_chans = k.usize("in_chans", Some(3))?;
    let (rope_theta, _) = rope(&mut k, 10_000.0)?;
    let fullatt = match k.take("fullatt_block_indexes") {
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            k.bad(
                "fullatt_block_indexes",
                format!("{v} is not a list of integers"),
            )
        })?,
        None => vec![7, 15, 23, 31],
    };
    let config = VisionConfig {
        depth: k.usize("depth", Some(32))?,
        hidden_size: k.usize("hidden_size", Some(1280))?,
        intermediate_size: k.usize("intermediate_size", Some(3420))?,
        num_heads: k.usize("num_heads", Some(16))?,
        in_channels: k.usize("in_channels", Some(in_chans))?,
        patch_size: patch,
        temporal_patch_size: k.usize("temporal_patch_size", Some(2))?,
        spatial_merge_size: k.usize("spatial_merge_size", Some(2))?,
        window_size: k.usize("window_size", Some(112))?,
        out_hidden_size: k.usize("out_hidden_size", Some(3584))?,
        fullatt_block_indexes: fullatt,
        tokens_per_second: k.usize("tokens_per_second", Some(2))?,
        rope_theta,
    };
    if config.in_channels != 3 {
        return Err(k.bad("in_channels", "only RGB (3) images"));
    }
    k.finish()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_style() -> Value {
        serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "use_sliding_window": false, "sliding_window": 32768, "max_window_layers": 2,
            "image_token_id": 7, "vision_start_token_id": 5, "vision_end_token_id": 6,
            "eos_token_id": 3, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48,
                "num_heads": 2, "in_chans": 3, "out_hidden_size": 64, "patch_size": 14,
                "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
                "window_size": 56, "fullatt_block_indexes": [1], "tokens_per_second": 2,
                "hidden_act": "silu"}
        })
    }

    #[test]
    fn reads_the_published_layout_and_refuses_what_it_cannot_build() {
        let p = Path::new("config.json");
        let c = QwenConfig::from_value(hub_style(), p).unwrap();
        assert_eq!(c.text.mrope_section, [2, 3, 3]);
        assert_eq!(c.vision.fullatt_block_indexes, vec![1]);
        assert_eq!(c.eos_token_ids, vec![3]);
        for (key, value, says) in [
            (
                "use_sliding_window",
                serde_json::json!(true),
                "use_sliding_window",
            ),
            ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
            ("frobnicate", serde_json::json!(1), "frobnicate"),
            (
                "rope_scaling",
                serde_json::json!({"type": "yarn", "factor": 4}),
                "type",
            ),
            ("model_type", serde_json::json!("qwen2_vl"), "model_type"),
        ] {
            let mut v = hub_style();
            v[key] = value;
            let e = QwenConfig::from_value(v, p).unwrap_err().to_string();
            assert!(e.contains(says), "{key}: {e}");
        }
        let mut v = hub_style();
        v["vision_config"]["embed_dim"] = serde_json::json!(32);
        let e = QwenConfig::from_value(v, p).unwrap_err().to_string();
        assert!(e.contains("vision_config.embed_dim"), "{e}");
    }
}
