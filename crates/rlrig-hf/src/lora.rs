//! LoRA (Hu et al. 2021, arXiv 2106.09685) on a model's projections: `y = W·x + b + (α/r)·B·A·x`
//! with `A` `[r, in]` and `B` `[out, r]` trained and `W`, `b` frozen. `B` starts at zero, so a
//! fresh adapter leaves the model unchanged.
//!
//! Adapters save and load in PEFT's layout: a directory with `adapter_config.json` (`r`,
//! `lora_alpha`, `target_modules`) and `adapter_model.safetensors` whose tensors are named
//! `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` (PyTorch's `[out, in]`
//! layout). Files with diffusers' `transformer.` prefix, or none, load too.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::HfError;

/// The module paths of the adapters' parameters (a regular expression), for saving or loading
/// them alone.
pub const PARAMS: &str = r"\.lora\.lora_[ab]$";

/// A low-rank adapter: `A` as `[in, r]` and `B` as `[r, out]` (burn's layout, the transpose of
/// PyTorch's), and the scale `α/r`.
#[derive(Module, Debug)]
pub struct Lora {
    lora_a: Param<Tensor<2>>,
    lora_b: Param<Tensor<2>>,
    scale: f64,
}

/// A projection that may carry an adapter: diffusers' Linear under the name `linear`.
#[derive(Module, Debug)]
pub struct Proj {
    linear: Linear,
    lora: Option<Lora>,
}

impl Proj {
    /// A projection without adapter.
    pub fn new(linear: Linear) -> Self {
        Proj { linear, lora: None }
    }

    /// `W·x + b`, plus the adapter's term when there is one and `with_lora`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, with_lora: bool) -> Tensor<D> {
        match (&self.lora, with_lora) {
            (Some(l), true) => {
                let low = x.clone().matmul(l.lora_a.val().unsqueeze::<D>());
                self.linear.forward(x) + low.matmul(l.lora_b.val().unsqueeze::<D>()) * l.scale
            }
            _ => self.linear.forward(x),
        }
    }

    /// Attaches a fresh adapter of rank `r` (`A` as PEFT initialises it, Kaiming-uniform with
    /// a = √5, `B` zero).
    pub fn attach(&mut self, r: usize, alpha: f64, device: &Device) {
        let [d_in, d_out] = self.linear.weight.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        self.lora = Some(Lora {
            lora_a: Param::from_tensor(Tensor::random(
                [d_in, r],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            lora_b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            scale: alpha / r as f64,
        });
    }

    /// The adapter as PyTorch-layout `A` `[r, in]` and `B` `[out, r]` values with shapes.
    fn export(&self) -> Option<[Matrix; 2]> {
        let l = self.lora.as_ref()?;
        let t = |p: &Param<Tensor<2>>| {
            let v = p.val().transpose();
            let dims = v.dims();
            (
                v.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 values"),
                dims,
            )
        };
        Some([t(&l.lora_a), t(&l.lora_b)])
    }

    /// Sets the adapter from PyTorch-layout `A` `[r, in]` and `B` `[out, r]`.
    fn import(&mut self, a: Matrix, b: Matrix, scale: f64, name: &str) -> Result<(), String> {
        let [d_in, d_out] = self.linear.weight.dims();
        let r = a.1[0];
        if a.1 != [r, d_in] || b.1 != [d_out, r] {
            return Err(format!(
                "{name}: lora_A {:?} and lora_B {:?} do not fit a {d_out}×{d_in} projection",
                a.1, b.1
            ));
        }
        let device = self.linear.weight.device();
        let t = |(v, s): Matrix| {
            Param::from_tensor(Tensor::<2>::from_data(TensorData::new(v, s), &device).transpose())
        };
        self.lora = Some(Lora {
            lora_a: t(a),
            lora_b: t(b),
            scale,
        });
        Ok(())
    }
}

/// A PyTorch-layout matrix: row-major values and `[rows, columns]`.
type Matrix = (Vec<f32>, [usize; 2]);

/// The settings of a set of adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank `r`.
    pub r: usize,
    /// `α`: the adapter's term is scaled by `α/r`.
    pub lora_alpha: f64,
    /// The projections that get adapters.
    pub target_modules: Targets,
}

/// PEFT's `target_modules`: module names, or one regular expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    /// Names matching a module's whole path or its end after a dot (`q_proj`).
    Names(Vec<String>),
    /// A regular expression matching a module's whole path.
    Regex(String),
}

impl From<Vec<String>> for Targets {
    fn from(names: Vec<String>) -> Self {
        Targets::Names(names)
    }
}

impl Targets {
    /// Whether the module at `path` is targeted (PEFT's rules).
    fn matches(&self, path: &str, regex: Option<&regex::Regex>) -> bool {
        match self {
            Targets::Names(names) => targeted(path, names),
            Targets::Regex(_) => regex.is_some_and(|r| r.is_match(path)),
        }
    }

    /// The compiled expression (anchored at both ends, as PEFT's `re.fullmatch`).
    fn regex(&self) -> Result<Option<regex::Regex>, String> {
        match self {
            Targets::Names(_) => Ok(None),
            Targets::Regex(r) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(Some)
                .map_err(|e| format!("`target_modules` {r:?}: {e}")),
        }
    }
}

/// PEFT's `adapter_config.json`, the fields rlrig reads and writes.
#[derive(Serialize, Deserialize)]
struct AdapterConfig {
    #[serde(default = "peft_type")]
    peft_type: String,
    r: usize,
    lora_alpha: f64,
    target_modules: Targets,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default = "none")]
    bias: String,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

fn peft_type() -> String {
    "LORA".into()
}
fn none() -> String {
    "none".into()
}

/// A model whose projections can carry adapters, each under its module path.
pub trait Adapted {
    /// Every adaptable projection with its module path (diffusers' names, e.g.
    /// `transformer_blocks.0.attn.to_q`).
    fn projections(&self) -> Vec<(String, &Proj)>;
    /// The same, mutable.
    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)>;
}

/// Whether the module at `path` is one of `targets` (PEFT's rule: the whole path or its end
/// after a dot).
fn targeted(path: &str, targets: &[String]) -> bool {
    targets
        .iter()
        .any(|t| path == t || path.ends_with(&format!(".{t}")))
}

/// Attaches fresh adapters to every targeted projection; an error names a target that
/// matches none.
pub fn attach<M: Adapted>(
    model: &mut M,
    config: &LoraConfig,
    device: &Device,
) -> Result<(), HfError> {
    if config.r == 0 {
        return Err(HfError::Settings("LoRA rank `r` must be at least 1".into()));
    }
    let regex = config.target_modules.regex().map_err(HfError::Settings)?;
    let names: &[String] = match &config.target_modules {
        Targets::Names(n) => n,
        Targets::Regex(_) => &[],
    };
    let mut hit = vec![false; names.len()];
    let mut any = false;
    for (path, p) in model.projections_mut() {
        for (i, t) in names.iter().enumerate() {
            if targeted(&path, std::slice::from_ref(t)) {
                hit[i] = true;
            }
        }
        if config.target_modules.matches(&path, regex.as_ref()) {
            p.attach(config.r, config.lora_alpha, device);
            any = true;
        }
    }
    if let Some(i) = hit.iter().position(|h| !h) {
        return Err(HfError::Settings(format!(
            "LoRA target module {:?} matches no projection of the model",
            names[i]
        )));
    }
    if !any {
        return Err(HfError::Settings(format!(
            "LoRA `target_modules` {:?} matches no projection of the model",
            config.target_modules
        )));
    }
    Ok(())
}

/// The adapters as `adapter_model.safetensors` bytes (PEFT's names), `config` in the
/// safetensors metadata too so that the bytes alone can be applied.
pub fn to_bytes<M: Adapted>(model: &M, config: &LoraConfig) -> Result<Vec<u8>, HfError> {
    let mut tensors: Vec<(String, Vec<u8>, [usize; 2])> = Vec::new();
    for (path, p) in model.projections() {
        if let Some([a, b]) = p.export() {
            for (suffix, (v, s)) in [("lora_A", a), ("lora_B", b)] {
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensors.push((format!("base_model.model.{path}.{suffix}.weight"), bytes, s));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                    .expect("shape and bytes agree"),
            )
        })
        .collect();
    let meta = BTreeMap::from([(
        "lora".to_string(),
        serde_json::to_string(config).expect("serialises"),
    )]);
    safetensors::serialize(views, Some(meta.into_iter().collect()))
        .map_err(|e| HfError::Settings(format!("adapters: {e}")))
}

/// Applies adapter bytes ([`to_bytes`], or a PEFT / diffusers file with `config`): every
/// targeted projection gets the file's adapter; a tensor the model has no place for, a missing
/// one or a wrong shape is an error naming it.
pub fn from_bytes<M: Adapted>(
    model: &mut M,
    bytes: &[u8],
    config: Option<&LoraConfig>,
    origin: &Path,
) -> Result<LoraConfig, HfError> {
    let fail = |message: String| HfError::Weights {
        path: origin.to_owned(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| fail(e.to_string()))?;
    let config = match config {
        Some(c) => c.clone(),
        None => {
            let (_, meta) =
                safetensors::SafeTensors::read_metadata(bytes).map_err(|e| fail(e.to_string()))?;
            let text = meta
                .metadata()
                .as_ref()
                .and_then(|m| m.get("lora").cloned())
                .ok_or_else(|| fail("no `lora` settings in the metadata".into()))?;
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?
        }
    };
    let mut by_path: BTreeMap<String, [Option<Matrix>; 2]> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let stem = name
            .strip_prefix("base_model.model.")
            .or_else(|| name.strip_prefix("transformer."))
            .unwrap_or(&name);
        let (path, which) = if let Some(p) = stem.strip_suffix(".lora_A.weight") {
            (p, 0)
        } else if let Some(p) = stem.strip_suffix(".lora_B.weight") {
            (p, 1)
        } else {
            return Err(fail(format!("{name}: not a LoRA tensor (lora_A / lora_B)")));
        };
        let shape: [usize; 2] = view
            .shape()
            .try_into()
            .map_err(|_| fail(format!("{name}: shape {:?} is not 2-D", view.shape())))?;
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            d => return Err(fail(format!("{name}: dtype {d:?}"))),
        };
        by_path.entry(path.to_string()).or_default()[which] = Some((values, shape));
    }
    let scale = config.lora_alpha / config.r as f64;
    let regex = config.target_modules.regex().map_err(fail)?;
    let mut used = 0;
    for (path, p) in model.projections_mut() {
        if !config.target_modules.matches(&path, regex.as_ref()) {
            continue;
        }
        let Some([a, b]) = by_path.remove(&path) else {
            return Err(fail(format!("missing adapter for {path}")));
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(fail(format!("{path}: lora_A or lora_B is missing")));
        };
        p.import(a, b, scale, &path).map_err(fail)?;
        used += 1;
    }
    if let Some(path) = by_path.keys().next() {
        return Err(fail(format!(
            "an adapter for {path}, which is no targeted projection of this model"
        )));
    }
    if used == 0 {
        return Err(fail("no adapter in the file".into()));
    }
    Ok(config)
}

/// Writes the adapters as a PEFT directory: `adapter_config.json` and
/// `adapter_model.safetensors`.
pub fn save_dir<M: Adapted>(model: &M, config: &LoraConfig, dir: &Path) -> Result<(), HfError> {
    let io = |e: std::io::Error| HfError::Io {
        path: dir.to_owned(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let adapter = AdapterConfig {
        peft_type: peft_type(),
        r: config.r,
        lora_alpha: config.lora_alpha,
        target_modules: config.target_modules.clone(),
        use_rslora: false,
        use_dora: false,
        bias: none(),
        other: BTreeMap::new(),
    };
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&adapter).expect("serialises"),
    )
    .map_err(io)?;
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        to_bytes(model, config)?,
    )
    .map_err(io)
}

/// Loads a PEFT adapter directory into `model` (plain LoRA only: rsLoRA, DoRA and trained
/// biases are refused by name).
pub fn load_dir<M: Adapted>(model: &mut M, dir: &Path) -> Result<LoraConfig, HfError> {
    let config_path = dir.join("adapter_config.json");
    let c: AdapterConfig = crate::read_json(&config_path)?;
    let bad = |message: String| HfError::Config {
        path: config_path.clone(),
        message,
    };
    if c.peft_type != "LORA" {
        return Err(bad(format!("`peft_type` = {:?}: only LORA", c.peft_type)));
    }
    for (key, on) in [("use_rslora", c.use_rslora), ("use_dora", c.use_dora)] {
        if on {
            return Err(bad(format!("`{key}` = true is not supported")));
        }
    }
    if c.bias != "none" {
        return Err(bad(format!("`bias` = {:?}: only \"none\"", c.bias)));
    }
    // PEFT features that change what the adapter computes or where it applies.
    for (key, value) in &c.other {
        let off = match value {
            serde_json::Value::Null => true,
            serde_json::Value::Bool(b) => !b,
            serde_json::Value::Object(m) => m.is_empty(),
            _ => false,
        };
        let refused = [
            "rank_pattern",
            "alpha_pattern",
            "layers_to_transform",
            "layers_pattern",
            "modules_to_save",
            "exclude_modules",
            "layer_replication",
            "trainable_token_indices",
            "target_parameters",
            "fan_in_fan_out",
            "lora_bias",
            "use_qalora",
            "use_bdlora",
        ];
        if refused.contains(&key.as_str()) && !off {
            return Err(bad(format!("`{key}` = {value} is not supported")));
        }
    }
    let config = LoraConfig {
        r: c.r,
        lora_alpha: c.lora_alpha,
        target_modules: c.target_modules,
    };
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HfError::Missing(path.clone()),
        _ => HfError::Io {
            path: path.clone(),
            message: e.to_string(),
        },
    })?;
    from_bytes(model, &bytes, Some(&config), &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_peft_names_at_a_path_end_and_regexes_over_whole_paths() {
        let names = Targets::Names(vec!["q_proj".into(), "attn.to_out.0".into()]);
        let r = names.regex().unwrap();
        assert!(names.matches("model.layers.0.self_attn.q_proj", r.as_ref()));
        assert!(names.matches("q_proj", r.as_ref()));
        assert!(!names.matches("model.layers.0.self_attn.qq_proj", r.as_ref()));
        assert!(names.matches("blocks.1.attn.to_out.0", r.as_ref()));
        let regex = Targets::Regex(r".*language_model.*\.(q_proj|v_proj)".into());
        let r = regex.regex().unwrap();
        assert!(regex.matches("model.language_model.layers.1.self_attn.v_proj", r.as_ref()));
        // Whole paths only, as PEFT's `re.fullmatch`.
        assert!(!regex.matches(
            "model.language_model.layers.1.self_attn.v_proj.x",
            r.as_ref()
        ));
        assert!(!regex.matches("model.visual.blocks.0.mlp.up_proj", r.as_ref()));
        let bad = Targets::Regex("(".into()).regex().unwrap_err();
        assert!(bad.contains("target_modules"), "{bad}");
        // PEFT's JSON: a list or a string.
        let t: Targets = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(t, Targets::Names(vec!["a".into(), "b".into()]));
        let t: Targets = serde_json::from_str(r#""a.*""#).unwrap();
        assert_eq!(t, Targets::Regex("a.*".into()));
    }
}
