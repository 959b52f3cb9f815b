//! The Stable Diffusion and InstructPix2Pix pipelines: classifier-free guidance over the
//! UNet, a scheduler's steps, the VAE at both ends. Batch order and guidance are diffusers':
//! `[uncond, cond]` for SD, `[text, image-only, uncond]` for InstructPix2Pix.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::SdError;
use crate::clip::ClipTextModel;
use crate::scheduler::Scheduler;
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet;
use crate::vae::Vae;

/// The components of a diffusers pipeline directory.
pub struct Pipeline {
    /// CLIP's tokenizer.
    pub tokenizer: ClipTokenizer,
    /// CLIP's text encoder.
    pub text_encoder: ClipTextModel,
    /// The denoiser (8 input channels for InstructPix2Pix).
    pub unet: UNet,
    /// The VAE.
    pub vae: Vae,
    /// The sampler.
    pub scheduler: Scheduler,
}

/// What a pipeline run made.
pub struct Generated {
    /// The final latents (unscaled, as diffusers' `output_type="latent"`).
    pub latents: Tensor<4>,
    /// The decoded images in `[0, 1]`, `[B, 3, H, W]`.
    pub images: Tensor<4>,
}

impl Pipeline {
    /// Loads a diffusers pipeline directory: `tokenizer/`, `text_encoder/`, `unet/`, `vae/`,
    /// `scheduler/scheduler_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Self, SdError> {
        let dir = dir.as_ref();
        Ok(Pipeline {
            tokenizer: ClipTokenizer::from_dir(dir.join("tokenizer"))?,
            text_encoder: ClipTextModel::from_dir(dir.join("text_encoder"), device)?,
            unet: UNet::from_dir(dir.join("unet"), None, device)?,
            vae: Vae::from_dir(dir.join("vae"), device)?,
            scheduler: Scheduler::from_file(dir.join("scheduler/scheduler_config.json"))?,
        })
    }

    /// The text encoder's states of each prompt, `[B, L, D]`.
    pub fn text_states(&self, prompts: &[&str], device: &Device) -> Result<Tensor<3>, SdError> {
        let len = self.tokenizer.max_len();
        let mut ids = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            ids.extend(self.tokenizer.encode(p)?.into_iter().map(i64::from));
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), len]), device);
        Ok(self.text_encoder.forward(ids))
    }

    /// Text to image: `latents` is the starting noise `[B, C, h, w]` (standard normal; it is
    /// scaled by the scheduler's `init_noise_sigma`), one prompt and negative prompt per item.
    pub fn generate(
        &self,
        prompts: &[&str],
        negative: &[&str],
        latents: Tensor<4>,
        steps: usize,
        guidance: f64,
    ) -> Result<Generated, SdError> {
        let device = latents.device();
        let cond = self.text_states(prompts, &device)?;
        let guided = guidance > 1.0;
        let ctx = if guided {
            Tensor::cat(vec![self.text_states(negative, &device)?, cond], 0)
        } else {
            cond
        };
        let schedule = self.scheduler.schedule(steps);
        let mut x = latents * schedule.init_noise_sigma();
        for i in 0..steps {
            let input = if guided {
                Tensor::cat(vec![x.clone(), x.clone()], 0)
            } else {
                x.clone()
            };
            let input = schedule.scale_model_input(input, i);
            let out = self.unet.forward(input, &[schedule.timesteps[i]], &ctx);
            let out = if guided {
                let mut halves = out.chunk(2, 0);
                let c = halves.pop().expect("two halves");
                let u = halves.pop().expect("two halves");
                u.clone() + (c - u) * guidance
            } else {
                out
            };
            x = schedule.step(out, i, x).prev_sample;
        }
        Ok(self.finish(x))
    }

    /// InstructPix2Pix: edits `images` (`[B, 3, H, W]` in `[0, 1]`) by `prompts`, from the
    /// starting noise `latents`, with text guidance `guidance` and image guidance
    /// `image_guidance`.
    pub fn edit(
        &self,
        prompts: &[&str],
        images: Tensor<4>,
        latents: Tensor<4>,
        steps: usize,
        guidance: f64,
        image_guidance: f64,
    ) -> Result<Generated, SdError> {
        let device = latents.device();
        let cond = self.text_states(prompts, &device)?;
        let guided = guidance > 1.0 && image_guidance >= 1.0;
        let source = self.vae.encode(images * 2.0 - 1.0).mean;
        let (ctx, source) = if guided {
            let uncond = self.text_states(&vec![""; prompts.len()], &device)?;
            (
                Tensor::cat(vec![cond, uncond.clone(), uncond], 0),
                Tensor::cat(vec![source.clone(), source.clone(), source.zeros_like()], 0),
            )
        } else {
            (cond, source)
        };
        let schedule = self.scheduler.schedule(steps);
        let mut x = latents * schedule.init_noise_sigma();
        for i in 0..steps {
            let input = if guided {
                Tensor::cat(vec![x.clone(), x.clone(), x.clone()], 0)
            } else {
                x.clone()
            };
            let input = Tensor::cat(
                vec![schedule.scale_model_input(input, i), source.clone()],
                1,
            );
            let out = self.unet.forward(input, &[schedule.timesteps[i]], &ctx);
            let out = if guided {
                let mut thirds = out.chunk(3, 0);
                let u = thirds.pop().expect("three parts");
                let img = thirds.pop().expect("three parts");
                let text = thirds.pop().expect("three parts");
                u.clone() + (text - img.clone()) * guidance + (img - u) * image_guidance
            } else {
                out
            };
            x = schedule.step(out, i, x).prev_sample;
        }
        Ok(self.finish(x))
    }

    fn finish(&self, latents: Tensor<4>) -> Generated {
        let raw = self.vae.decode(latents.clone() / self.vae.scaling_factor());
        Generated {
            latents,
            images: (raw / 2.0 + 0.5).clamp(0.0, 1.0),
        }
    }
}
