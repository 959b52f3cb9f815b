//! Rectified flow: the loss trains, the samplers are deterministic, the SDE's log-probabilities
//! are the documented Gaussian densities.

mod common;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use common::{max_diff, model, perturb, tiny, values};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlrig_models::Dit;
use rlrig_models::image::images_to_tensor;
use rlrig_models::rectified_flow::{self, SamplerConfig};
use rlrig_models::text::{TextBatch, Tokenizer};
use rlrig_world::{Canvas, sample};

fn world_batch(n: u64, device: &Device) -> (Tensor<4>, TextBatch) {
    let canvas = Canvas::new(32).unwrap();
    let samples: Vec<_> = (0..n).map(|i| sample(&canvas, 5, i)).collect();
    let images: Vec<_> = samples.iter().map(|s| s.image.clone()).collect();
    let prompts: Vec<_> = samples.iter().map(|s| s.graph.prompt()).collect();
    (
        images_to_tensor(&images, device).unwrap(),
        Tokenizer::default().batch(&prompts, device).unwrap(),
    )
}

fn eval_loss(model: &Dit, x0: &Tensor<4>, text: &TextBatch) -> f32 {
    let model = model.valid();
    let x0 = x0.clone().without_autodiff();
    let text = text.clone().to_device(&x0.device());
    (0..4)
        .map(|seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
            values(rectified_flow::training_loss(
                &model,
                x0.clone(),
                None,
                &text,
                &mut rng,
            ))[0]
        })
        .sum::<f32>()
        / 4.0
}

#[test]
fn adamw_steps_on_a_fixed_batch_reduce_the_loss() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut model = Dit::new(&tiny(8, 3), &device).unwrap();
    let (x0, text) = world_batch(4, &device);
    let before = eval_loss(&model, &x0, &text);
    assert!(before.is_finite() && before > 0.1, "initial loss {before}");

    let mut optim = rectified_flow::adamw().init();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..40 {
        let loss = rectified_flow::training_loss(&model, x0.clone(), None, &text, &mut rng);
        assert!(values(loss.clone())[0].is_finite());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(rectified_flow::LEARNING_RATE, model, grads);
    }
    let after = eval_loss(&model, &x0, &text);
    assert!(after < 0.7 * before, "loss {before} → {after}");
}

#[test]
fn the_loss_is_deterministic_for_a_generator_state() {
    let model = model(8, 6, 4);
    let device = Device::flex();
    let (x0, text) = world_batch(3, &device);
    let cond = x0.clone().flip([3]);
    let loss = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        values(rectified_flow::training_loss(
            &model,
            x0.clone(),
            Some(&cond),
            &text,
            &mut rng,
        ))[0]
    };
    assert_eq!(loss(1).to_bits(), loss(1).to_bits());
    assert_ne!(loss(1), loss(2));
}

#[test]
fn ode_sampling_is_bit_identical_for_a_seed() {
    let model = model(4, 3, 5);
    let device = Device::flex();
    let text = Tokenizer::default()
        .batch(
            &["red circle left of blue square", "green triangle"],
            &device,
        )
        .unwrap();
    for guidance in [1.0, 3.0] {
        let sampler = SamplerConfig {
            steps: 4,
            guidance,
            ..SamplerConfig::default()
        };
        let a = values(rectified_flow::sample_ode(&model, &text, None, &sampler, 9));
        let b = values(rectified_flow::sample_ode(&model, &text, None, &sampler, 9));
        let c = values(rectified_flow::sample_ode(
            &model, &text, None, &sampler, 10,
        ));
        assert_eq!(a.len(), 2 * 3 * 32 * 32);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a.iter().zip(&c).any(|(x, y)| x != y));
    }
}

#[test]
fn guidance_mixes_the_conditional_and_unconditional_velocities() {
    let model = model(8, 6, 6);
    let device = Device::flex();
    let (x, text) = world_batch(2, &device);
    let cond = x.clone().mul_scalar(0.5);
    let input = Tensor::cat(vec![x.clone(), cond.clone()], 1);
    let s = Tensor::<1>::from_floats([0.6, 0.6], &device);
    let uncond = TextBatch::unconditional(2, 48, &device);
    let v_c = model.forward(
        input.clone(),
        s.clone(),
        text.ids().clone(),
        text.mask().clone(),
    );
    let v_u = model.forward(input, s, uncond.ids().clone(), uncond.mask().clone());

    let guided = rectified_flow::velocity(&model, x.clone(), 0.6, &text, Some(&cond), 2.5);
    let expected = v_u.clone() + (v_c.clone() - v_u).mul_scalar(2.5);
    assert!(max_diff(guided, expected) < 1e-4);
    let plain = rectified_flow::velocity(&model, x, 0.6, &text, Some(&cond), 1.0);
    assert!(max_diff(plain, v_c) < 1e-6);
}

/// The SDE's log-probability, by hand in f64 from x, v and x' (docs/models.md "SDE sampler").
fn hand_log_prob(x: &[f32], v: &[f32], x_next: &[f32], step: usize, steps: usize, a: f64) -> f64 {
    let level = |k: usize| 1.0 - k as f64 / steps as f64;
    let (s, s_next) = (level(step), level(step + 1));
    let dt = s_next - s;
    let sigma = if step == 0 {
        a * (s / (1.0 - level(1))).sqrt()
    } else {
        a * (s / (1.0 - s)).sqrt()
    };
    let var = sigma * sigma * -dt;
    let total: f64 = x
        .iter()
        .zip(v)
        .zip(x_next)
        .map(|((&x, &v), &xn)| {
            let (x, v, xn) = (f64::from(x), f64::from(v), f64::from(xn));
            let mu = x * (1.0 + sigma * sigma / (2.0 * s) * dt)
                + v * (1.0 + sigma * sigma * (1.0 - s) / (2.0 * s)) * dt;
            -(xn - mu).powi(2) / (2.0 * var) - 0.5 * (2.0 * std::f64::consts::PI * var).ln()
        })
        .sum();
    total / x.len() as f64
}

#[test]
fn sde_log_probs_are_the_gaussian_densities_of_the_steps() {
    let model = model(8, 3, 7);
    let device = Device::flex();
    let text = Tokenizer::default()
        .batch(&["blue square above red circle"], &device)
        .unwrap();
    let sampler = SamplerConfig {
        steps: 3,
        guidance: 1.0,
        noise_scale: 0.7,
    };
    let out = rectified_flow::sample_sde(&model, &text, None, &sampler, 21);
    assert_eq!(out.log_probs.len(), 3);
    assert_eq!(out.trajectory.len(), 4);
    assert_eq!(
        values(out.images.clone()),
        values(out.trajectory[3].clone())
    );

    for step in 0..3 {
        let (x, x_next) = (
            out.trajectory[step].clone(),
            out.trajectory[step + 1].clone(),
        );
        let s = 1.0 - step as f64 / 3.0;
        let v = rectified_flow::velocity(&model, x.clone(), s, &text, None, 1.0);
        assert!(
            values(v.clone()).iter().any(|&v| v.abs() > 1e-3),
            "v is not trivial"
        );
        let expected = hand_log_prob(
            &values(x.clone()),
            &values(v),
            &values(x_next.clone()),
            step,
            3,
            0.7,
        );
        let got = f64::from(values(out.log_probs[step].clone())[0]);
        assert!(
            (got - expected).abs() < 1e-4 * expected.abs().max(1.0),
            "step {step}: sampler {got}, by hand {expected}"
        );
        let again =
            rectified_flow::transition_log_prob(&model, x, x_next, step, &text, None, &sampler);
        let again = f64::from(values(again)[0]);
        assert!((again - expected).abs() < 1e-4 * expected.abs().max(1.0));
    }

    // Deterministic for a seed, different for another.
    let same = rectified_flow::sample_sde(&model, &text, None, &sampler, 21);
    assert_eq!(values(same.images), values(out.images.clone()));
    let other = rectified_flow::sample_sde(&model, &text, None, &sampler, 22);
    assert_ne!(values(other.images), values(out.images));
}

#[test]
fn a_transition_far_from_the_mean_is_less_likely() {
    let model = perturb(Dit::new(&tiny(8, 3), &Device::flex()).unwrap(), 0.05, 8);
    let device = Device::flex();
    let text = Tokenizer::default()
        .batch(&["red circle", "red circle"], &device)
        .unwrap();
    let sampler = SamplerConfig {
        steps: 5,
        ..SamplerConfig::default()
    };
    let out = rectified_flow::sample_sde(&model, &text, None, &sampler, 3);
    let (x, x_next) = (out.trajectory[2].clone(), out.trajectory[3].clone());
    let near = values(rectified_flow::transition_log_prob(
        &model,
        x.clone(),
        x_next.clone(),
        2,
        &text,
        None,
        &sampler,
    ));
    let far = values(rectified_flow::transition_log_prob(
        &model,
        x,
        x_next.add_scalar(0.5),
        2,
        &text,
        None,
        &sampler,
    ));
    assert!(
        near.iter().zip(&far).all(|(n, f)| n > f),
        "{near:?} vs {far:?}"
    );
}

#[test]
fn clean_image_prediction_turns_into_the_velocity_that_reaches_it() {
    let device = Device::flex();
    let config = rlrig_models::DitConfig {
        prediction: rlrig_models::Prediction::Sample,
        ..tiny(8, 3)
    };
    let model = Dit::new(&config, &device).unwrap();
    let text = Tokenizer::new(config.text_len)
        .batch(&["red circle", "blue square"], &device)
        .unwrap();
    let x = rectified_flow::normal_tensor(
        [2, 3, config.image_size, config.image_size],
        &mut ChaCha8Rng::seed_from_u64(1),
        &device,
    );
    for guidance in [1.0, 2.5] {
        let s = 0.3;
        let v = rectified_flow::velocity(&model, x.clone(), s, &text, None, guidance);
        // A fresh network outputs exactly zero: the clean image it predicts is 0, so the
        // velocity is x / s and one Euler step to s = 0 lands on it.
        let landed = x.clone() - v.clone().mul_scalar(s);
        assert!(values(landed).iter().all(|v| v.abs() < 1e-5));
        assert!(max_diff(v, x.clone().div_scalar(s)) < 1e-4);
    }
    // The loss is the clean image's error: against a zero output, the mean square of x0.
    let (x0, text) = world_batch(2, &device);
    let expected: f32 =
        values(x0.clone()).iter().map(|v| v * v).sum::<f32>() / (2 * 3 * 32 * 32) as f32;
    let loss: f32 =
        rectified_flow::training_loss(&model, x0, None, &text, &mut ChaCha8Rng::seed_from_u64(2))
            .into_scalar();
    assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
}

#[test]
fn the_edit_weighted_loss_only_reweighs_changed_pixels() {
    let device = Device::flex();
    let editor = perturb(model(8, 6, 7), 0.05, 3);
    let (x0, text) = world_batch(4, &device);
    let loss = |cond: &Tensor<4>, w: f64| {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        values(rectified_flow::training_loss_weighted(
            &editor,
            x0.clone(),
            Some(cond),
            &text,
            &mut rng,
            w,
            0.0,
        ))[0]
    };
    let plain = |cond: &Tensor<4>| {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        values(rectified_flow::training_loss(
            &editor,
            x0.clone(),
            Some(cond),
            &text,
            &mut rng,
        ))[0]
    };
    // No edit (source = target): every weight is 1, the mean is the plain mean.
    assert!((loss(&x0, 10.0) - plain(&x0)).abs() < 1e-6);
    // Weight 0: the plain mean whatever the source.
    let other = x0.clone().flip([3]);
    assert!((loss(&other, 0.0) - plain(&other)).abs() < 1e-7);
    // A real edit: the changed pixels count more, so the loss moves.
    assert!((loss(&other, 10.0) - plain(&other)).abs() > 1e-6);
}

#[test]
fn noise_mean_shifts_the_drawn_noise_levels_as_documented() {
    use rand::Rng;
    let device = Device::flex();
    let model = perturb(model(8, 3, 4), 0.05, 9);
    let (x0, text) = world_batch(3, &device);
    let shifted = |m: f64| {
        values(rectified_flow::training_loss_weighted(
            &model,
            x0.clone(),
            None,
            &text,
            &mut ChaCha8Rng::seed_from_u64(17),
            0.0,
            m,
        ))[0]
    };
    // By hand, in the documented draw order: normals (s = sigmoid(m + n)), dropout
    // uniforms, the noise; then the velocity loss.
    let m = 1.5;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let s: Vec<f32> = rectified_flow::standard_normals(3, &mut rng)
        .into_iter()
        .map(|n| (1.0 / (1.0 + (-(m + f64::from(n))).exp())) as f32)
        .collect();
    let drop: Vec<bool> = (0..3)
        .map(|_| rng.random::<f64>() < rectified_flow::UNCOND_PROB)
        .collect();
    let eps = rectified_flow::normal_tensor(x0.dims(), &mut rng, &device);
    let sb = Tensor::<1>::from_floats(s.as_slice(), &device).reshape([3, 1, 1, 1]);
    let xs = x0.clone() * (sb.clone().neg() + 1.0) + eps.clone() * sb;
    let dropped = text.drop_rows(&drop);
    let v = model.forward(
        xs,
        Tensor::<1>::from_floats(s.as_slice(), &device),
        dropped.ids().clone(),
        dropped.mask().clone(),
    );
    let expected = values((v - (eps - x0.clone())).square().mean())[0];
    assert!(
        (shifted(m) - expected).abs() < 1e-6,
        "{} vs {expected}",
        shifted(m)
    );
    // Mean 0 is the plain loss, and the mean changes what is drawn.
    let plain = values(rectified_flow::training_loss(
        &model,
        x0.clone(),
        None,
        &text,
        &mut ChaCha8Rng::seed_from_u64(17),
    ))[0];
    assert_eq!(shifted(0.0).to_bits(), plain.to_bits());
    assert_ne!(shifted(m).to_bits(), plain.to_bits());
}

#[test]
fn an_sde_window_samples_its_steps_then_finishes_with_the_ode() {
    let model = model(8, 3, 7);
    let device = Device::flex();
    let text = Tokenizer::default()
        .batch(
            &[
                "blue square above red circle",
                "red circle left of green square",
            ],
            &device,
        )
        .unwrap();
    let sampler = SamplerConfig {
        steps: 4,
        guidance: 1.0,
        noise_scale: 0.7,
    };
    let seeds = [5, 6];
    let window = rectified_flow::sample_sde_window(&model, &text, None, &sampler, 2, &seeds);
    let whole = rectified_flow::sample_sde_chains(&model, &text, None, &sampler, &seeds);
    let c = model.config();
    assert_eq!((c.out_channels, c.image_size), (3, 32));
    let per_state = 3 * 32 * 32;
    for row in 0..2 {
        assert_eq!(window.log_probs[row].len(), 2);
        assert_eq!(window.states[row].len(), 3 * per_state);
        // The window's steps are the whole SDE chain's first steps, noise included.
        assert_eq!(
            window.states[row][..3 * per_state],
            whole.states[row][..3 * per_state]
        );
        assert_eq!(window.log_probs[row][..], whole.log_probs[row][..2]);
    }
    // After the window: two Euler ODE steps from the window's last state, no noise.
    let last = |row: usize| window.states[row][2 * per_state..].to_vec();
    let mut x = Tensor::<4>::from_data(
        burn::tensor::TensorData::new([last(0), last(1)].concat(), [2, 3, 32, 32]),
        &device,
    );
    for (s, s_next) in [(0.5, 0.25), (0.25, 0.0)] {
        let v = rectified_flow::velocity(&model, x.clone(), s, &text, None, 1.0);
        x = x + v.mul_scalar(s_next - s);
    }
    assert!(max_diff(x, window.images.clone()) < 1e-5);
    assert!(max_diff(window.images.clone(), whole.images) > 1e-3);
    // The learner's log-probability of a window step uses the whole schedule's coefficients.
    let state = |k: usize| {
        Tensor::<4>::from_data(
            burn::tensor::TensorData::new(
                [
                    window.states[0][k * per_state..(k + 1) * per_state].to_vec(),
                    window.states[1][k * per_state..(k + 1) * per_state].to_vec(),
                ]
                .concat(),
                [2, 3, 32, 32],
            ),
            &device,
        )
    };
    for k in 0..2 {
        let lp = values(rectified_flow::transition_log_prob(
            &model,
            state(k),
            state(k + 1),
            k,
            &text,
            None,
            &sampler,
        ));
        for (row, (got, stored)) in lp.iter().zip(&window.log_probs).enumerate() {
            let stored = stored[k];
            assert!(
                (got - stored).abs() < 1e-3,
                "step {k} row {row}: {got} vs {stored}"
            );
        }
    }
}
