//! The Stable Diffusion 3 pipeline: two CLIP text encoders (their penultimate states side by
//! side, padded to the transformer's text width, and their pooled projections joined) and T5
//! (its states after the CLIP tokens), the MMDiT over rectified-flow Euler steps with
//! classifier-free guidance, the VAE with SD3's latent shift. Batch order and guidance are
//! diffusers': `[uncond, cond]`.
//!
//! Without T5 (a directory that lists none, or [`T5::Zeros`]) the T5 states are zeros, exactly
//! as diffusers computes them when `text_encoder_3=None` is passed.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::SdError;
use crate::clip::ClipTextModel;
use crate::flow_match::FlowMatchScheduler;
use crate::mmdit::Mmdit;
use crate::t5::{T5Encoder, T5Tokenizer};
use crate::tokenizer::ClipTokenizer;
use crate::vae::Vae;
use rlrig_hf::HfError;

/// Whether T5 runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T5 {
    /// The directory's `text_encoder_3` when it lists one, zero states otherwise.
    Auto,
    /// Zero states of `max_sequence_length` tokens even when the directory lists a T5 (less
    /// memory; diffusers' `text_encoder_3=None`).
    Zeros,
}

#[derive(Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default)]
    text_encoder_3: Option<(Option<String>, Option<String>)>,
}

/// The components of a diffusers `StableDiffusion3Pipeline` directory.
pub struct Sd3Pipeline {
    /// The first CLIP's tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The first CLIP text encoder (with projection).
    pub text_encoder: ClipTextModel,
    /// The second CLIP's tokenizer.
    pub tokenizer_2: ClipTokenizer,
    /// The second CLIP text encoder (with projection).
    pub text_encoder_2: ClipTextModel,
    /// T5's tokenizer and encoder, when they run.
    pub t5: Option<(T5Tokenizer, T5Encoder)>,
    /// The MMDiT.
    pub transformer: Mmdit,
    /// The VAE (scaling and shift factors in its config).
    pub vae: Vae,
    /// The sampler.
    pub scheduler: FlowMatchScheduler,
}

/// Prompt conditioning: text states and pooled embeddings.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// `[B, L_clip + max_sequence_length, joint_attention_dim]`.
    pub states: Tensor<3>,
    /// `[B, pooled_projection_dim]`.
    pub pooled: Tensor<2>,
}

impl Conditioning {
    /// `[self; other]` along the batch.
    pub fn cat(self, other: Conditioning) -> Conditioning {
        Conditioning {
            states: Tensor::cat(vec![self.states, other.states], 0),
            pooled: Tensor::cat(vec![self.pooled, other.pooled], 0),
        }
    }
}

/// What a pipeline run made.
pub struct Sd3Generated {
    /// The final latents (as diffusers' `output_type="latent"`: scaled and shifted).
    pub latents: Tensor<4>,
    /// The decoded images in `[0, 1]`, `[B, 3, H, W]`.
    pub images: Tensor<4>,
}

impl Sd3Pipeline {
    /// Loads a diffusers `StableDiffusion3Pipeline` directory: `tokenizer/`, `text_encoder/`,
    /// `tokenizer_2/`, `text_encoder_2/`, `transformer/`, `vae/`,
    /// `scheduler/scheduler_config.json`, and `model_index.json` for the class and T5.
    pub fn from_dir(dir: impl AsRef<Path>, t5: T5, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        let index_path = dir.join("model_index.json");
        let index: ModelIndex = crate::read_json(&index_path)?;
        let bad = |message: String| {
            SdError::File(HfError::Config {
                path: index_path.clone(),
                message,
            })
        };
        if index.class_name != "StableDiffusion3Pipeline" {
            return Err(bad(format!(
                "`_class_name` = {:?}: expected StableDiffusion3Pipeline",
                index.class_name
            )));
        }
        let listed = match &index.text_encoder_3 {
            Some((_, Some(class))) if class != "T5EncoderModel" && t5 == T5::Auto => {
                return Err(bad(format!(
                    "`text_encoder_3` = {class}: only T5EncoderModel is supported (or t5 = \"zeros\")"
                )));
            }
            Some((_, Some(_))) => true,
            _ => false,
        };
        let text_encoder = ClipTextModel::from_dir(dir.join("text_encoder"), device)?;
        let text_encoder_2 = ClipTextModel::from_dir(dir.join("text_encoder_2"), device)?;
        for (name, enc) in [
            ("text_encoder", &text_encoder),
            ("text_encoder_2", &text_encoder_2),
        ] {
            if !enc.has_projection() {
                return Err(SdError::File(HfError::Config {
                    path: dir.join(name).join("config.json"),
                    message: "`architectures`: SD3 needs CLIPTextModelWithProjection".into(),
                }));
            }
        }
        let transformer = Mmdit::from_dir(dir.join("transformer"), device)?;
        let t5 = if listed && t5 == T5::Auto {
            let encoder = T5Encoder::from_dir(dir.join("text_encoder_3"), device)?;
            if encoder.width() != transformer.joint_attention_dim() {
                return Err(SdError::File(HfError::Config {
                    path: dir.join("text_encoder_3/config.json"),
                    message: format!(
                        "`d_model` {} differs from the transformer's joint_attention_dim {}",
                        encoder.width(),
                        transformer.joint_attention_dim()
                    ),
                }));
            }
            Some((T5Tokenizer::from_dir(dir.join("tokenizer_3"))?, encoder))
        } else {
            None
        };
        Ok(Sd3Pipeline {
            tokenizer: ClipTokenizer::from_dir(dir.join("tokenizer"))?,
            text_encoder,
            tokenizer_2: ClipTokenizer::from_dir(dir.join("tokenizer_2"))?,
            text_encoder_2,
            t5,
            transformer,
            vae: Vae::from_dir(dir.join("vae"), device)?,
            scheduler: FlowMatchScheduler::from_file(dir.join("scheduler/scheduler_config.json"))?,
        })
    }

    /// Image side in pixels at the transformer's trained latent size.
    pub fn default_size(&self) -> usize {
        self.transformer.sample_size() * self.vae.downscale()
    }

    /// The conditioning of `prompts` (the same text for every encoder), with
    /// `max_sequence_length` T5 tokens (zeros without T5) after the CLIP tokens.
    pub fn encode(
        &self,
        prompts: &[&str],
        max_sequence_length: usize,
        device: &Device,
    ) -> Result<Conditioning, SdError> {
        let mut states = Vec::new();
        let mut pooled = Vec::new();
        for (tok, enc) in [
            (&self.tokenizer, &self.text_encoder),
            (&self.tokenizer_2, &self.text_encoder_2),
        ] {
            let len = tok.max_len();
            let mut ids = Vec::with_capacity(prompts.len() * len);
            for p in prompts {
                ids.extend(tok.encode(p)?.into_iter().map(i64::from));
            }
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), len]), device);
            let (all, last) = enc.forward_all(ids.clone());
            states.push(all[all.len() - 2].clone());
            pooled.push(enc.text_embeds(&ids, last).expect("checked at load"));
        }
        let clip = Tensor::cat(states, 2);
        let [b, l, w] = clip.dims();
        let joint = self.transformer.joint_attention_dim();
        if w > joint {
            return Err(SdError::Settings(format!(
                "the CLIP states are {w} wide, wider than the transformer's joint_attention_dim {joint}"
            )));
        }
        let clip = if w < joint {
            Tensor::cat(vec![clip, Tensor::zeros([b, l, joint - w], device)], 2)
        } else {
            clip
        };
        let t5 = match &self.t5 {
            Some((tok, enc)) => {
                let ids: Vec<i64> = tok
                    .encode(prompts, max_sequence_length)?
                    .into_iter()
                    .flatten()
                    .map(i64::from)
                    .collect();
                enc.forward(Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [b, max_sequence_length]),
                    device,
                ))
            }
            None => Tensor::zeros([b, max_sequence_length, joint], device),
        };
        Ok(Conditioning {
            states: Tensor::cat(vec![clip, t5], 1),
            pooled: Tensor::cat(pooled, 1),
        })
    }

    /// The transformer's velocity for `x` at step `t` (diffusers' timestep scale), guided by
    /// `guidance` when `uncond` is given: `u + g·(c − u)` from one batch `[uncond; cond]`.
    pub fn velocity(
        &self,
        x: Tensor<4>,
        t: f64,
        cond: &Conditioning,
        uncond: Option<&Conditioning>,
        guidance: f64,
    ) -> Tensor<4> {
        match uncond {
            Some(u) => {
                let both = u.clone().cat(cond.clone());
                let out = self.transformer.forward(
                    Tensor::cat(vec![x.clone(), x], 0),
                    &[t],
                    both.states,
                    both.pooled,
                );
                let mut halves = out.chunk(2, 0);
                let c = halves.pop().expect("two halves");
                let u = halves.pop().expect("two halves");
                u.clone() + (c - u) * guidance
            }
            None => self
                .transformer
                .forward(x, &[t], cond.states.clone(), cond.pooled.clone()),
        }
    }

    /// Text to image by Euler steps: `latents` is the starting noise `[B, C, h, w]` (standard
    /// normal, used as is), one prompt and negative prompt per item; guidance above 1 runs the
    /// unconditional branch too.
    pub fn generate(
        &self,
        prompts: &[&str],
        negative: &[&str],
        latents: Tensor<4>,
        steps: usize,
        guidance: f64,
        max_sequence_length: usize,
    ) -> Result<Sd3Generated, SdError> {
        let device = latents.device();
        let cond = self.encode(prompts, max_sequence_length, &device)?;
        let uncond = if guidance > 1.0 {
            Some(self.encode(negative, max_sequence_length, &device)?)
        } else {
            None
        };
        let schedule = self.scheduler.schedule(steps);
        let mut x = latents;
        for i in 0..steps {
            let v = self.velocity(
                x.clone(),
                schedule.timesteps[i] as f64,
                &cond,
                uncond.as_ref(),
                guidance,
            );
            x = schedule.step(v, i, x);
        }
        Ok(self.finish(x))
    }

    /// Decodes pipeline latents: `z / scaling_factor + shift_factor` through the VAE, to `[0, 1]`.
    pub fn finish(&self, latents: Tensor<4>) -> Sd3Generated {
        let raw = self
            .vae
            .decode(latents.clone() / self.vae.scaling_factor() + self.vae.shift_factor());
        Sd3Generated {
            latents,
            images: (raw / 2.0 + 0.5).clamp(0.0, 1.0),
        }
    }
}
