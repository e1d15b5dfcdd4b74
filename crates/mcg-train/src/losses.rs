//! The WGAN-GP losses: D's (separate passes, as the paper's step computes it, or fused into
//! one pass, as the fast step does, with PacGAN's packs and the mixture's importance weights)
//! and G's; and a step's losses read back as named values.

use tch::{Device, Kind, Tensor};

use crate::TrainError;
use crate::models::Discriminator;

/// D's WGAN-GP loss and its parts, on the device.
#[derive(Debug)]
pub struct CriticLosses {
    /// The loss, −wasserstein + λ·penalty.
    pub loss: Tensor,
    /// The Wasserstein estimate E[D(real)] − E[D(fake)].
    pub wasserstein: Tensor,
    /// The gradient penalty.
    pub penalty: Tensor,
}

impl CriticLosses {
    /// The loss of a Wasserstein estimate and a penalty of weight `lambda`.
    pub fn new(wasserstein: Tensor, penalty: Tensor, lambda: f64) -> Self {
        let loss = -&wasserstein + &penalty * lambda;
        Self {
            loss,
            wasserstein,
            penalty,
        }
    }

    /// The same values, out of the autograd graph.
    pub fn detach(&self) -> Self {
        Self {
            loss: self.loss.detach(),
            wasserstein: self.wasserstein.detach(),
            penalty: self.penalty.detach(),
        }
    }
}

/// The WGAN-GP gradient penalty E[(‖∇D(x̂)‖₂ − 1)²], x̂ = ε·real + (1 − ε)·fake with one ε ~
/// U(0, 1) per sample, the norm taken over each sample's whole gradient (not per pixel).
pub fn gradient_penalty(
    score: impl Fn(&Tensor) -> Tensor,
    real: &Tensor,
    fake: &Tensor,
    eps: &Tensor,
) -> Tensor {
    let b = real.size()[0];
    let e = eps.view([b, 1, 1]);
    let rest = -&e + 1.0;
    let interp = (real * &e + fake * rest).detach().set_requires_grad(true);
    let out = score(&interp);
    let grads = Tensor::run_backward(&[out.sum(Kind::Float)], &[&interp], true, true);
    let norms = grads[0].view([b, -1]).norm_scalaropt_dim(2, [1i64], false);
    (norms - 1.0).square().mean(Kind::Float)
}

/// The discriminator's WGAN-GP loss, E[D(fake)] − E[D(real)] + λ·penalty, and its parts.
pub fn discriminator_loss(
    d: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    eps: &Tensor,
    lambda: f64,
) -> CriticLosses {
    let wasserstein = d.score(real).mean(Kind::Float) - d.score(fake).mean(Kind::Float);
    let penalty = gradient_penalty(|x| d.score(x), real, fake, eps);
    CriticLosses::new(wasserstein, penalty, lambda)
}

/// The generator's loss, −E[D(fake)].
pub fn generator_loss(d: &Discriminator, fake: &Tensor) -> Tensor {
    -d.score(fake).mean(Kind::Float)
}

/// The mean of pack scores `[B / pack]`, each weighted by the product of its images'
/// importance weights (`[B]`) when there are any.
pub(crate) fn weighted_mean(scores: &Tensor, weights: Option<&Tensor>, pack: i64) -> Tensor {
    match weights {
        Some(w) => {
            let per_pack = w.view([-1, pack]).prod_dim_int(1, false, Kind::Float);
            (scores * per_pack).mean(Kind::Float)
        }
        None => scores.mean(Kind::Float),
    }
}

/// The WGAN-GP loss of D with real, simulated and interpolated images scored in one pass
/// (D has no batch statistics, so this equals three passes): E_w[D(fake)] − E[D(real)] +
/// λ·E[(‖∇D(x̂)‖ − 1)²], over packs of `D::pack()` images, `eps` `[B / pack]` one per pack,
/// the fake mean weighted by the importance weights.
pub fn fused_discriminator_loss(
    d: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    fake_weights: Option<&Tensor>,
    eps: &Tensor,
    lambda: f64,
) -> CriticLosses {
    let pack = d.pack() as i64;
    let size = real.size();
    let packs = size[0] / pack;
    let e = eps
        .view([packs, 1, 1, 1])
        .expand([packs, pack, 1, 1], false)
        .reshape([size[0], 1, 1]);
    let rest = -&e + 1.0;
    let interp = (real * &e + fake * rest).detach().set_requires_grad(true);
    let all = Tensor::cat(&[real, fake, &interp], 0);
    let scores = d.score(&all);
    let s_real = scores.narrow(0, 0, packs);
    let s_fake = scores.narrow(0, packs, packs);
    let s_interp = scores.narrow(0, 2 * packs, packs);
    let grads = Tensor::run_backward(&[s_interp.sum(Kind::Float)], &[&interp], true, true);
    let norms = grads[0]
        .reshape([packs, -1])
        .norm_scalaropt_dim(2, [1i64], false);
    let penalty = (norms - 1.0).square().mean(Kind::Float);
    let wasserstein = s_real.mean(Kind::Float) - weighted_mean(&s_fake, fake_weights, pack);
    CriticLosses::new(wasserstein, penalty, lambda)
}

/// A step's losses on the device, read back together at the end of the step (reading a value
/// makes the host wait for the device).
pub(crate) struct StepLosses {
    /// D's losses at its last step.
    pub(crate) critic: CriticLosses,
    /// G's loss.
    pub(crate) g_loss: Tensor,
    /// The mixture's probabilities after the step.
    pub(crate) probabilities: Option<Tensor>,
}

/// [`StepLosses`] as numbers.
pub(crate) struct StepValues {
    pub(crate) d_loss: f64,
    pub(crate) wasserstein: f64,
    pub(crate) gradient_penalty: f64,
    pub(crate) g_loss: f64,
    pub(crate) probabilities: Option<Vec<f64>>,
}

impl StepLosses {
    /// The values, through one transfer to the host.
    pub(crate) fn read(&self) -> Result<StepValues, TrainError> {
        let scalar = |t: &Tensor| t.to_kind(Kind::Double).reshape([1]);
        let mut parts = vec![
            scalar(&self.critic.loss),
            scalar(&self.critic.wasserstein),
            scalar(&self.critic.penalty),
            scalar(&self.g_loss),
        ];
        parts.extend(self.probabilities.iter().map(|p| p.to_kind(Kind::Double)));
        let values = Tensor::cat(&parts, 0).to_device(Device::Cpu);
        let values: Vec<f64> = Vec::<f64>::try_from(&values)?;
        let [d_loss, wasserstein, gradient_penalty, g_loss] = values[..4] else {
            unreachable!("four scalars lead the values");
        };
        Ok(StepValues {
            d_loss,
            wasserstein,
            gradient_penalty,
            g_loss,
            probabilities: self.probabilities.as_ref().map(|_| values[4..].to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelConfig;
    use tch::nn;

    #[test]
    fn gradient_penalty_matches_a_hand_computed_case() {
        // D(x) = Σ w·x + x₀₀² over a 2×2 image: ∇D = w + (2x₀₀, 0, 0, 0).
        let w = Tensor::from_slice(&[1.0f32, 2.0, 2.0, 0.0]).view([1, 2, 2]);
        let score = |x: &Tensor| {
            (x * &w).sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
                + x.select(1, 0).select(1, 0).square()
        };
        let real = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]).view([2, 2, 2]);
        let fake = Tensor::zeros([2, 2, 2], (Kind::Float, Device::Cpu));
        let eps = Tensor::from_slice(&[1.0f32, 0.0]);
        // Sample 0: x̂ = real₀ → x₀₀ = 1, ∇ = (3, 2, 2, 0), ‖∇‖ = √17.
        // Sample 1: x̂ = fake₁ = 0 → ∇ = (1, 2, 2, 0), ‖∇‖ = 3.
        let expected = (((17f64).sqrt() - 1.0).powi(2) + (3.0f64 - 1.0).powi(2)) / 2.0;
        let gp = gradient_penalty(score, &real, &fake, &eps).double_value(&[]);
        assert!((gp - expected).abs() < 1e-5, "{gp} vs {expected}");
        // The per-pixel norm (the original code's bug) would give Σ over pixels of (|g| − 1)²,
        // a different number: make sure the test tells them apart.
        let per_pixel = ((4.0 + 1.0 + 1.0 + 1.0) + (0.0 + 1.0 + 1.0 + 1.0)) / 8.0;
        assert!((gp - per_pixel).abs() > 0.1);
    }

    #[test]
    fn the_fused_discriminator_loss_equals_separate_passes() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 16,
            discriminator_channels: 4,
            pack: 1,
            ..ModelConfig::default()
        };
        let d = Discriminator::new(&(vs.root() / "d"), &cfg);
        let real = Tensor::randn([6, 16, 16], (Kind::Float, Device::Cpu));
        let fake = Tensor::randn([6, 16, 16], (Kind::Float, Device::Cpu)) * 0.5;
        let eps = Tensor::rand([6], (Kind::Float, Device::Cpu));
        let a = discriminator_loss(&d, &real, &fake, &eps, 10.0);
        let b = fused_discriminator_loss(&d, &real, &fake, None, &eps, 10.0);
        for (x, y) in [
            (&a.loss, &b.loss),
            (&a.wasserstein, &b.wasserstein),
            (&a.penalty, &b.penalty),
        ] {
            let (x, y) = (x.double_value(&[]), y.double_value(&[]));
            assert!((x - y).abs() < 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
        // Weights of 1 change nothing; weights scale each fake's score.
        let ones = Tensor::ones([6], (Kind::Float, Device::Cpu));
        let w1 = fused_discriminator_loss(&d, &real, &fake, Some(&ones), &eps, 10.0).wasserstein;
        assert!((w1.double_value(&[]) - b.wasserstein.double_value(&[])).abs() < 1e-6);
        let w = Tensor::from_slice(&[2.0f32, 0.0, 1.0, 1.0, 0.5, 1.5]);
        let w2 = fused_discriminator_loss(&d, &real, &fake, Some(&w), &eps, 10.0).wasserstein;
        let want = d.score(&real).mean(Kind::Float) - (d.score(&fake) * &w).mean(Kind::Float);
        assert!((w2.double_value(&[]) - want.double_value(&[])).abs() < 1e-5);
    }

    #[test]
    fn packed_scores_take_the_product_of_their_images_weights() {
        let scores = Tensor::from_slice(&[1.0f32, 2.0]);
        let w = Tensor::from_slice(&[2.0f32, 0.5, 3.0, 1.0]);
        // Packs (2·0.5) and (3·1): (1·1 + 2·3) / 2.
        let m = weighted_mean(&scores, Some(&w), 2).double_value(&[]);
        assert!((m - 3.5).abs() < 1e-6, "{m}");
    }
}
