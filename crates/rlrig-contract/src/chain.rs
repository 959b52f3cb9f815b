//! What a stochastic Editor answers in phase 2 (Flow-GRPO): the edited image and the denoising
//! chain it was sampled along, with each step's log-probability.

use base64::Engine as _;
use half::f16;
use serde::{Deserialize, Serialize};

use crate::Image;

/// The states a stochastic sampler visited — the starting noise, then the state after each of
/// its `K` steps — with the log-probability of each step's transition under the weights that
/// sampled it (Flow-GRPO's `logp_old`).
///
/// States are kept as IEEE half floats (`f16`), serialised as one base64 string of
/// little-endian bytes (a 32×32×3 chain of 10 steps is 66 KiB, 90 KiB as text). A sampler whose
/// log-probabilities must match the stored states exactly rounds its states to `f16` as it
/// goes (rlrig's neural Editor does).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawChain")]
pub struct DenoisingChain {
    /// The version of the weights that sampled it.
    pub version: u64,
    /// The SDE's noise scale `a`.
    pub noise_scale: f64,
    /// The classifier-free guidance scale the velocities were taken at.
    pub guidance: f64,
    /// One state's shape: channels, height, width.
    pub shape: [u32; 3],
    /// Per step, the log-probability of its transition (`K` values).
    pub log_probs: Vec<f32>,
    #[serde(with = "f16_base64")]
    states: Vec<u8>,
    /// The length of the sampler's schedule when it is longer than the chain: the chain's `K`
    /// steps are the schedule's first, the rest were deterministic (ODE) steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<u32>,
}

#[derive(Deserialize)]
struct RawChain {
    version: u64,
    noise_scale: f64,
    guidance: f64,
    shape: [u32; 3],
    log_probs: Vec<f32>,
    #[serde(with = "f16_base64")]
    states: Vec<u8>,
    #[serde(default)]
    schedule: Option<u32>,
}

impl TryFrom<RawChain> for DenoisingChain {
    type Error = ChainError;
    fn try_from(r: RawChain) -> Result<Self, ChainError> {
        let chain = DenoisingChain {
            version: r.version,
            noise_scale: r.noise_scale,
            guidance: r.guidance,
            shape: r.shape,
            log_probs: r.log_probs,
            states: r.states,
            schedule: r.schedule,
        };
        let want = chain.state_len() * (chain.log_probs.len() + 1) * 2;
        if chain.states.len() != want || chain.log_probs.is_empty() {
            return Err(ChainError(format!(
                "a chain of {} steps of {:?} states needs {want} bytes of f16 states, got {}",
                chain.log_probs.len(),
                chain.shape,
                chain.states.len()
            )));
        }
        if let Some(n) = chain.schedule
            && (n as usize) < chain.log_probs.len()
        {
            return Err(ChainError(format!(
                "a chain of {} steps cannot come from a schedule of {n}",
                chain.log_probs.len()
            )));
        }
        Ok(chain)
    }
}

/// A chain whose parts do not fit together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(String);

impl std::fmt::Debug for DenoisingChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DenoisingChain(v{}, {} steps of {:?})",
            self.version,
            self.steps(),
            self.shape
        )
    }
}

impl DenoisingChain {
    /// A chain from its `K + 1` states (row-major, each `shape` = channels × height × width,
    /// concatenated; rounded to `f16`) and `K` step log-probabilities.
    pub fn new(
        version: u64,
        noise_scale: f64,
        guidance: f64,
        shape: [u32; 3],
        states: &[f32],
        log_probs: Vec<f32>,
    ) -> Result<Self, ChainError> {
        let bytes = states
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        DenoisingChain::try_from(RawChain {
            version,
            noise_scale,
            guidance,
            shape,
            log_probs,
            states: bytes,
            schedule: None,
        })
    }

    /// The chain as the first `K` steps of a schedule of `steps` steps whose remaining steps
    /// were deterministic ([`DenoisingChain::schedule_steps`]); an error if `steps < K`.
    pub fn within_schedule(mut self, steps: usize) -> Result<Self, ChainError> {
        if steps < self.steps() {
            return Err(ChainError(format!(
                "a chain of {} steps cannot come from a schedule of {steps}",
                self.steps()
            )));
        }
        self.schedule = (steps > self.steps()).then_some(steps as u32);
        Ok(self)
    }

    /// The length of the sampler's schedule: `K` unless the chain is the stochastic window of
    /// a longer one. Step `k` of the chain is step `k` of this schedule.
    pub fn schedule_steps(&self) -> usize {
        self.schedule.map_or(self.steps(), |n| n as usize)
    }

    /// The number of sampler steps `K`.
    pub fn steps(&self) -> usize {
        self.log_probs.len()
    }

    /// Values in one state.
    pub fn state_len(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }

    /// State `k` (`0` is the starting noise, `K` the final sample), as `f32`.
    ///
    /// # Panics
    ///
    /// If `k > K`.
    pub fn state(&self, k: usize) -> Vec<f32> {
        assert!(
            k <= self.steps(),
            "state {k} of a {}-step chain",
            self.steps()
        );
        let n = self.state_len() * 2;
        self.states[k * n..(k + 1) * n]
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }
}

/// Rounds `v` to the nearest `f16`, as a chain stores it.
pub fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// A Diffuser's or an Editor's answer to an exploring request (Flow-GRPO): the image and the
/// denoising chain it was sampled along.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledImage {
    /// The generated or edited image.
    pub image: Image,
    /// How it was sampled.
    pub chain: DenoisingChain,
}

mod f16_base64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_round_trips_through_json_and_keeps_f16_values() {
        let states: Vec<f32> = (0..3 * 2 * 2 * 3).map(|i| i as f32 * 0.1 - 1.0).collect();
        let chain = DenoisingChain::new(4, 0.7, 1.0, [3, 2, 2], &states, vec![-1.5, 0.25]).unwrap();
        assert_eq!(chain.steps(), 2);
        let text = serde_json::to_string(&chain).unwrap();
        assert!(
            text.contains("\"states\":\""),
            "states as one string: {text}"
        );
        let back: DenoisingChain = serde_json::from_str(&text).unwrap();
        assert_eq!(back, chain);
        for k in 0..=2 {
            let want: Vec<f32> = states[k * 12..(k + 1) * 12]
                .iter()
                .map(|&v| round_f16(v))
                .collect();
            assert_eq!(back.state(k), want);
        }
        // Rounded values are exact.
        assert_eq!(round_f16(round_f16(0.1)), round_f16(0.1));
        assert_eq!(chain.schedule_steps(), 2);
        assert!(
            !text.contains("schedule"),
            "no schedule for a whole chain: {text}"
        );
    }

    #[test]
    fn a_window_chain_keeps_its_schedule_through_json() {
        let states = [0.0; 3 * 12];
        let chain = DenoisingChain::new(1, 0.7, 1.0, [3, 2, 2], &states, vec![-1.0, -2.0])
            .unwrap()
            .within_schedule(10)
            .unwrap();
        assert_eq!((chain.steps(), chain.schedule_steps()), (2, 10));
        let back: DenoisingChain =
            serde_json::from_str(&serde_json::to_string(&chain).unwrap()).unwrap();
        assert_eq!(back.schedule_steps(), 10);
        let short = DenoisingChain::new(1, 0.7, 1.0, [3, 2, 2], &states, vec![-1.0, -2.0])
            .unwrap()
            .within_schedule(1)
            .unwrap_err();
        assert!(short.to_string().contains("schedule of 1"), "{short}");
        let mut value = serde_json::to_value(&chain).unwrap();
        value["schedule"] = serde_json::json!(1);
        let err = serde_json::from_value::<DenoisingChain>(value).unwrap_err();
        assert!(err.to_string().contains("schedule of 1"), "{err}");
    }

    #[test]
    fn a_chain_whose_states_do_not_fit_is_refused() {
        let err = DenoisingChain::new(0, 0.7, 1.0, [3, 2, 2], &[0.0; 12], vec![0.0]).unwrap_err();
        assert!(err.to_string().contains("needs 48 bytes"), "{err}");
        let err = DenoisingChain::new(0, 0.7, 1.0, [3, 2, 2], &[0.0; 12], vec![]).unwrap_err();
        assert!(err.to_string().contains("0 steps"), "{err}");
    }
}
