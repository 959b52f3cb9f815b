//! The Policy's network (the paper's Actor) on the shared encoder of [`crate::vlm`]: a
//! prefix language model over `[image; prompt; reflection]` that samples, decodes greedily and
//! scores edit prompts, writing only words of the edit-prompt vocabulary ([`writable`]).

use crate::ModelError;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rlrig_contract::Image;
use serde::{Deserialize, Serialize};

use crate::architecture::Architecture;
use crate::image::images_to_tensor;
use crate::layers::xavier;
use crate::text::{BOS, EOS, PAD};
use crate::vlm::{TextRows, Vlm, VlmConfig, architecture, segment};

/// The Policy's network: a prefix language model over `[image; prompt; reflection]`.
#[derive(Module, Debug)]
pub struct PolicyNet {
    vlm: Vlm,
    head: Linear,
}

architecture!(PolicyNet, "rlrig.policy_config", "Policy");

/// What the Policy reads: the image, the prompt's and the reflection's token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// The current image.
    pub image: Image,
    /// The prompt's ids (no padding).
    pub prompt: Vec<u32>,
    /// The reflection's ids (no padding).
    pub reflection: Vec<u32>,
}

impl PolicyInput {
    /// The input for an image, a prompt and a reflection, tokenized with the whole vocabulary;
    /// a word outside it is an error naming it (and which text it is in).
    pub fn new(image: Image, prompt: &str, reflection: &str) -> Result<Self, ModelError> {
        let tok = crate::text::Tokenizer::full(usize::MAX);
        Ok(PolicyInput {
            image,
            prompt: tok.tokens(prompt).map_err(|e| format!("the prompt: {e}"))?,
            reflection: tok
                .tokens(reflection)
                .map_err(|e| format!("the reflection: {e}"))?,
        })
    }
}

/// How the Policy picks tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Decoding {
    /// The most likely token each time (deterministic); else sample.
    pub greedy: bool,
    /// Logits are divided by it before the softmax (sampling and the returned log-probs).
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens only (0: all).
    pub top_k: usize,
    /// The most tokens an edit prompt may have, `<eos>` included.
    pub max_tokens: usize,
    /// Greedy decoding only: the likeliest token that keeps the edit prompt inside the
    /// edit-prompt language ([`rlrig_world::edit`]), so every finished prompt parses. The
    /// returned log-probs stay the network's own. Sampling ignores it: GRPO's ratios need the
    /// network's own distribution.
    pub grammar: bool,
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            greedy: true,
            temperature: 1.0,
            top_k: 0,
            max_tokens: 16,
            grammar: false,
        }
    }
}

/// Whether `prefix` followed by `next` can still become an edit prompt of the edit-prompt
/// language (`next` = `<eos>`: whether `prefix` is one).
pub fn in_edit_language(prefix: &[u32], next: u32) -> bool {
    use rlrig_world::edit::EditProblem;
    let tok = crate::text::Tokenizer::full(usize::MAX);
    if next == EOS {
        return tok
            .decode(prefix)
            .is_ok_and(|t| rlrig_world::Edit::parse(&t).is_ok());
    }
    let mut ids = prefix.to_vec();
    ids.push(next);
    let Ok(text) = tok.decode(&ids) else {
        return false;
    };
    match rlrig_world::Edit::parse(&text) {
        Ok(_) => true,
        Err(e) => matches!(e.problem, EditProblem::UnexpectedWord { found: None, .. }),
    }
}

/// One decoded edit prompt: its tokens (`<eos>` last when it ended) and each token's
/// log-probability under `softmax(logits / temperature)` over the [`writable`] ids (top-k only
/// narrows what is sampled; the returned log-probs are those [`PolicyNet::score`] gives).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Token ids, `<eos>` included when generated.
    pub tokens: Vec<u32>,
    /// One log-probability per token.
    pub logprobs: Vec<f32>,
}

impl PolicyNet {
    /// A freshly initialised network.
    pub fn new(config: &VlmConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(PolicyNet {
            vlm: Vlm::new(config, device)?,
            head: xavier(config.width, config.vocab_size, device),
        })
    }

    /// The text row of an input and a target prefix (`<bos>` then `target`).
    fn row(&self, input: &PolicyInput, target: &[u32]) -> Result<(Vec<u32>, Vec<u32>), ModelError> {
        let len = self.vlm.config().text_len;
        let used = input.prompt.len() + input.reflection.len() + 1 + target.len();
        if used > len {
            return Err(ModelError::Invalid(format!(
                "prompt ({} tokens), reflection ({}) and edit prompt ({}) do not fit the Policy's {len} text tokens",
                input.prompt.len(),
                input.reflection.len(),
                target.len() + 1
            )));
        }
        let mut ids = Vec::with_capacity(len);
        let mut segs = Vec::with_capacity(len);
        ids.extend(&input.prompt);
        segs.extend(std::iter::repeat_n(segment::PROMPT, input.prompt.len()));
        ids.extend(&input.reflection);
        segs.extend(std::iter::repeat_n(
            segment::REFLECTION,
            input.reflection.len(),
        ));
        ids.push(BOS);
        ids.extend(target);
        segs.extend(std::iter::repeat_n(segment::TARGET, target.len() + 1));
        ids.resize(len, PAD);
        segs.resize(len, 0);
        Ok((ids, segs))
    }

    /// Next-token logits at every text position, `(B, L, V)`.
    fn logits(
        &self,
        inputs: &[PolicyInput],
        targets: &[Vec<u32>],
    ) -> Result<Tensor<3>, ModelError> {
        let device = self.vlm.device();
        let mut rows = TextRows::default();
        for (input, target) in inputs.iter().zip(targets) {
            let (ids, segs) = self.row(input, target)?;
            rows.groups
                .push(ids.iter().map(|&id| u32::from(id != PAD)).collect());
            rows.positions.push((0..ids.len() as u32).collect());
            rows.ids.push(ids);
            rows.segments.push(segs);
        }
        let images: Vec<Image> = inputs.iter().map(|i| i.image.clone()).collect();
        let images = images_to_tensor(&images, &device)?;
        let n = self.vlm.config().num_patches();
        let rows = rows.trimmed();
        let l = rows.len();
        let z = self.vlm.forward(images, &rows);
        Ok(self.head.forward(z.narrow(1, n, l)))
    }

    /// The log-probabilities of given edit prompts (`targets`, `<eos>` included when they
    /// end), token by token, as a `(B, max target length)` tensor with a gradient (zero past
    /// each row's end), and the matching 0/1 weights. `temperature` divides the logits.
    pub fn target_logprobs(
        &self,
        inputs: &[PolicyInput],
        targets: &[Vec<u32>],
        temperature: f64,
    ) -> Result<(Tensor<2>, Tensor<2>), ModelError> {
        let device = self.vlm.device();
        // A target's last token is predicted, never read: the rows hold `<bos>` and all but
        // it, as decoding's last step did (so whatever decoding fits, scoring fits).
        let read: Vec<Vec<u32>> = targets
            .iter()
            .map(|t| t[..t.len().saturating_sub(1)].to_vec())
            .collect();
        let logits = self.logits(inputs, &read)?;
        let [b, l, _] = logits.dims();
        let width = targets.iter().map(Vec::len).max().unwrap_or(0).max(1);
        // Row r's target token k is predicted at text position start_r + k, where start_r is
        // the position of its <bos>.
        let mut pos = vec![0i64; b * width];
        let mut tok = vec![0i64; b * width];
        let mut weight = vec![0f32; b * width];
        for (r, (input, target)) in inputs.iter().zip(targets).enumerate() {
            let start = input.prompt.len() + input.reflection.len();
            for (k, &t) in target.iter().enumerate() {
                pos[r * width + k] = (start + k) as i64;
                tok[r * width + k] = i64::from(t);
                weight[r * width + k] = 1.0;
            }
        }
        let v = logits.dims()[2];
        let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, [b, width]), &device);
        let at = logits.gather(1, pos.unsqueeze_dim::<3>(2).expand([b, width, v]));
        let mask: Vec<f32> = (0..v)
            .map(|i| if writable(i) { 0.0 } else { MASKED })
            .collect();
        let mask = Tensor::<1>::from_data(TensorData::new(mask, [v]), &device)
            .reshape([1, 1, v])
            .expand([b, width, v]);
        let logp = log_softmax(at.div_scalar(temperature) + mask, 2);
        let tok = Tensor::<2, Int>::from_data(TensorData::new(tok, [b, width]), &device);
        let chosen = logp
            .gather(2, tok.unsqueeze_dim::<3>(2))
            .reshape([b, width]);
        let weight = Tensor::<2>::from_data(TensorData::new(weight, [b, width]), &device);
        debug_assert!(width <= l);
        Ok((chosen * weight.clone(), weight))
    }

    /// Each given edit prompt's per-token log-probabilities, on the CPU.
    pub fn score(
        &self,
        inputs: &[PolicyInput],
        targets: &[Vec<u32>],
        temperature: f64,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let (logp, _) = self.target_logprobs(inputs, targets, temperature)?;
        let width = logp.dims()[1];
        let flat = logp
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        Ok(targets
            .iter()
            .enumerate()
            .map(|(r, t)| flat[r * width..r * width + t.len()].to_vec())
            .collect())
    }

    /// Decodes one edit prompt per input; `rngs` (one per input) drive sampling.
    pub fn decode<R: Rng>(
        &self,
        inputs: &[PolicyInput],
        decoding: &Decoding,
        rngs: &mut [R],
    ) -> Result<Vec<Decoded>, ModelError> {
        let mut out: Vec<Decoded> = inputs
            .iter()
            .map(|_| Decoded {
                tokens: Vec::new(),
                logprobs: Vec::new(),
            })
            .collect();
        let mut done = vec![false; inputs.len()];
        for _ in 0..decoding.max_tokens {
            if done.iter().all(|&d| d) {
                break;
            }
            let targets: Vec<Vec<u32>> = out.iter().map(|d| d.tokens.clone()).collect();
            let logits = self.logits(inputs, &targets)?;
            let [_, l, v] = logits.dims();
            let flat = logits
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?;
            for (r, input) in inputs.iter().enumerate() {
                if done[r] {
                    continue;
                }
                let at = input.prompt.len() + input.reflection.len() + out[r].tokens.len();
                let row = &flat[(r * l + at) * v..(r * l + at + 1) * v];
                let prefix = &out[r].tokens;
                let allowed =
                    |t: u32| !(decoding.grammar && decoding.greedy) || in_edit_language(prefix, t);
                let (token, logp) = pick(row, decoding, &allowed, &mut rngs[r]);
                out[r].tokens.push(token);
                out[r].logprobs.push(logp);
                done[r] = token == EOS;
            }
        }
        Ok(out)
    }
}

/// What the Policy may write: the words of prompts and edit prompts (`1..PROMPT_VOCAB_SIZE`)
/// and `<eos>`. The rest (`<pad>`, the reflection's words, `<bos>`) is masked out of its
/// softmax, so every edit prompt it writes is one the Editor can read, and its log-probs are
/// over what it may write.
pub fn writable(id: usize) -> bool {
    (1..crate::text::PROMPT_VOCAB_SIZE).contains(&id) || id == EOS as usize
}

/// The logit offset of ids the Policy may not write.
const MASKED: f32 = -1e9;

/// Picks the next token from one row of logits; returns it and its log-probability under
/// `softmax(logits / temperature)` over the [`writable`] ids. Greedy picks the likeliest token
/// that `allowed` accepts (the likeliest of all when it accepts none).
fn pick<R: Rng>(
    logits: &[f32],
    d: &Decoding,
    allowed: &dyn Fn(u32) -> bool,
    rng: &mut R,
) -> (u32, f32) {
    let t = d.temperature.max(1e-6);
    let scaled: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if writable(i) {
                f64::from(x) / t
            } else {
                f64::from(MASKED)
            }
        })
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scaled.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let mut order: Vec<usize> = (0..scaled.len()).filter(|&i| writable(i)).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    let token = if d.greedy {
        order
            .iter()
            .copied()
            .find(|&i| allowed(i as u32))
            .unwrap_or(order[0])
    } else {
        let k = if d.top_k == 0 {
            order.len()
        } else {
            d.top_k.min(order.len())
        };
        let weights: Vec<f64> = order[..k]
            .iter()
            .map(|&i| (scaled[i] - max).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut chosen = order[k - 1];
        for (&i, w) in order[..k].iter().zip(&weights) {
            if u < *w {
                chosen = i;
                break;
            }
            u -= w;
        }
        chosen
    };
    (token as u32, (scaled[token] - lse) as f32)
}
