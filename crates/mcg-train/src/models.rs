//! The generator G (volumes from latent variables) and the discriminator D (a score per image),
//! and the WGAN-GP losses.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// What the generator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Multi-CryoGAN: a latent segment z = (1 − α)·z₀ + α·z₁ mapped to volumes by a 3D CNN.
    #[default]
    Multi,
    /// CryoGAN: one learnable volume.
    Single,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "multi" => Ok(Self::Multi),
            "single" => Ok(Self::Single),
            other => Err(format!("unknown mode {other:?}: expected multi or single")),
        }
    }
}

/// The architecture settings of G and D (saved with the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// multi or single.
    pub mode: Mode,
    /// Volume and image edge, voxels.
    pub box_size: usize,
    /// Edge of the paper's latent cube (z ∈ R^{L³}); 32 in the paper.
    pub latent_size: usize,
    /// Upper bound of the uniform distribution z₀, z₁ are drawn from. The paper uses 0.025; we
    /// default to 1.0. With Adam, a tiny latent moves the first layer's response to α by a tiny
    /// amount per step, so G learns one average volume long before it uses α: on the 100,000
    /// image Hsp90 discrete set (H100, 7 minutes) 0.025 left both ends of the segment nearer the
    /// open state, while 1.0 sent them to different states (see DEVELOPERS.md).
    pub latent_scale: f64,
    /// Multi mode with a low-dimensional latent instead of the paper's cube: z₀, z₁ ∈ R^d and a
    /// small decoder (a linear layer to 4³ cells, then three ×2 upsamplings with 3D
    /// convolutions). `None` (the default): the paper's latent.
    #[serde(default)]
    pub latent_dims: Option<usize>,
    /// Channels of G's hidden 3D convolutions.
    pub generator_channels: i64,
    /// Channels of D's first convolution (doubled at each of its strided layers).
    pub discriminator_channels: i64,
    /// Zero G's volumes outside the sphere of radius N/2.
    pub spherical_mask: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Multi,
            box_size: 32,
            latent_size: 32,
            latent_scale: 1.0,
            latent_dims: None,
            generator_channels: 16,
            discriminator_channels: 32,
            spherical_mask: true,
        }
    }
}

/// The generator: volumes `[k][N][N][N]` for latent positions α (`[k]`, in [0, 1]).
#[derive(Debug)]
pub struct Generator {
    mode: Mode,
    n: i64,
    /// Fixed latent end points `[2][1][L][L][L]` (multi mode); saved with the weights.
    ends: Option<Tensor>,
    net: Option<nn::Sequential>,
    /// The single volume (single mode).
    volume: Option<Tensor>,
    mask: Option<Tensor>,
}

impl Generator {
    /// Builds G under `path` of a var store. The latent end points are drawn from
    /// U(0, latent_scale) with libtorch's generator (seed it first) and registered as
    /// non-trainable variables, so checkpoints keep them.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let n = cfg.box_size as i64;
        let device = path.device();
        let mask = cfg.spherical_mask.then(|| sphere_mask(n, device));
        match cfg.mode {
            Mode::Single => {
                // Kept non-negative by projection after each update
                // ([`Generator::project_constraints`]), not by a ReLU, which would stop the
                // gradient of every voxel that once went below zero.
                let volume = path.var("volume", &[n, n, n], nn::Init::Const(1e-3));
                Self {
                    mode: Mode::Single,
                    n,
                    ends: None,
                    net: None,
                    volume: Some(volume),
                    mask,
                }
            }
            Mode::Multi if cfg.latent_dims.is_some() => {
                let d = cfg.latent_dims.expect("checked") as i64;
                let ends = path
                    .var(
                        "latent_ends",
                        &[2, d],
                        nn::Init::Uniform {
                            lo: 0.0,
                            up: cfg.latent_scale,
                        },
                    )
                    .set_requires_grad(false);
                let c = cfg.generator_channels;
                let up = |x: &Tensor| {
                    let s = x.size()[2] * 2;
                    x.upsample_trilinear3d([s, s, s], false, None, None, None)
                };
                let net = nn::seq()
                    .add(nn::linear(path / "l1", d, 2 * c * 64, Default::default()))
                    .add_fn(move |x| x.leaky_relu().view([-1, 2 * c, 4, 4, 4]))
                    .add_fn(up)
                    .add(conv3(path / "c1", 2 * c, c))
                    .add_fn(|x| x.leaky_relu())
                    .add_fn(up)
                    .add(conv3(path / "c2", c, c))
                    .add_fn(|x| x.leaky_relu())
                    .add_fn(up)
                    .add(conv3(path / "c3", c, 1));
                Self {
                    mode: Mode::Multi,
                    n,
                    ends: Some(ends),
                    net: Some(net),
                    volume: None,
                    mask,
                }
            }
            Mode::Multi => {
                let l = cfg.latent_size as i64;
                let mut ends = path.var(
                    "latent_ends",
                    &[2, 1, l, l, l],
                    nn::Init::Uniform {
                        lo: 0.0,
                        up: cfg.latent_scale,
                    },
                );
                ends = ends.set_requires_grad(false);
                let c = cfg.generator_channels;
                let net = nn::seq()
                    .add(conv3(path / "c1", 1, c))
                    .add_fn(|x| x.leaky_relu())
                    .add(conv3(path / "c2", c, 2 * c))
                    .add_fn(|x| x.leaky_relu())
                    .add(conv3(path / "c3", 2 * c, c))
                    .add_fn(|x| x.leaky_relu())
                    .add(conv3(path / "c4", c, 1));
                Self {
                    mode: Mode::Multi,
                    n,
                    ends: Some(ends),
                    net: Some(net),
                    volume: None,
                    mask,
                }
            }
        }
    }

    /// The volumes at latent positions `alphas` (`[k]`), non-negative.
    pub fn volumes(&self, alphas: &Tensor) -> Tensor {
        let k = alphas.size()[0];
        let n = self.n;
        let raw = match self.mode {
            Mode::Single => self
                .volume
                .as_ref()
                .expect("single mode has a volume")
                .unsqueeze(0)
                .expand([k, n, n, n], false),
            Mode::Multi => {
                let ends = self.ends.as_ref().expect("multi mode has latent ends");
                // One α per volume, broadcast over the latent's dimensions.
                let mut shape = vec![k];
                shape.extend(std::iter::repeat_n(1, ends.dim() - 1));
                let a = alphas.view(shape.as_slice());
                let rest = -&a + 1.0;
                let z = ends.get(0).unsqueeze(0) * rest + ends.get(1).unsqueeze(0) * &a;
                let mut out = self.net.as_ref().expect("multi mode has a net").forward(&z);
                if out.size()[2] != n {
                    out = out.upsample_trilinear3d([n, n, n], false, None, None, None);
                }
                out.squeeze_dim(1)
            }
        };
        let v = match self.mode {
            Mode::Single => raw,
            // Softplus, not ReLU: a ReLU output dies for good once every voxel of it goes
            // negative (seen: the whole volume collapsed to zero within minutes of training).
            Mode::Multi => raw.softplus(),
        };
        match &self.mask {
            Some(m) => v * m,
            None => v,
        }
    }
}

impl Generator {
    /// Restores the constraints after an optimiser step: the single volume is clamped to ≥ 0.
    pub fn project_constraints(&mut self) {
        if let Some(v) = &mut self.volume {
            tch::no_grad(|| {
                let _ = v.clamp_min_(0.0);
            });
        }
    }
}

/// A 3×3×3 convolution that keeps the grid size (padding 1).
fn conv3(path: nn::Path, inputs: i64, outputs: i64) -> nn::Conv3D {
    nn::conv3d(
        path,
        inputs,
        outputs,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    )
}

/// 1 inside the sphere of radius N/2 about voxel N/2, 0 outside, `[N][N][N]`.
pub fn sphere_mask(n: i64, device: tch::Device) -> Tensor {
    let c = (n / 2) as f64;
    let r = Tensor::arange(n, (Kind::Float, device)) - c;
    let r2 = r.square();
    let d2 = r2.view([n, 1, 1]) + r2.view([1, n, 1]) + r2.view([1, 1, n]);
    d2.le(c * c).to_kind(Kind::Float)
}

/// The discriminator: a 2D CNN without batch normalisation (WGAN-GP forbids it), one score per
/// image.
#[derive(Debug)]
pub struct Discriminator {
    net: nn::Sequential,
}

impl Discriminator {
    /// Builds D for `n`² images under `path`.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let c = cfg.discriminator_channels;
        let strided = |p: nn::Path, i: i64, o: i64| {
            nn::conv2d(
                p,
                i,
                o,
                4,
                nn::ConvConfig {
                    stride: 2,
                    padding: 1,
                    ..Default::default()
                },
            )
        };
        let n = cfg.box_size as i64;
        let side = n / 8;
        let net = nn::seq()
            .add_fn(|x| x.unsqueeze(1))
            .add(strided(path / "c1", 1, c))
            .add_fn(|x| x.leaky_relu())
            .add(strided(path / "c2", c, 2 * c))
            .add_fn(|x| x.leaky_relu())
            .add(strided(path / "c3", 2 * c, 4 * c))
            .add_fn(|x| x.leaky_relu())
            .add_fn(|x| x.flatten(1, -1))
            .add(nn::linear(
                path / "out",
                4 * c * side * side,
                1,
                Default::default(),
            ))
            .add_fn(|x| x.squeeze_dim(1));
        Self { net }
    }

    /// Scores `[B]` of images `[B][N][N]`.
    pub fn score(&self, images: &Tensor) -> Tensor {
        self.net.forward(images)
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

/// The discriminator's WGAN-GP loss, E[D(fake)] − E[D(real)] + λ·penalty, and its parts
/// (Wasserstein estimate E[D(real)] − E[D(fake)], penalty).
pub fn discriminator_loss(
    d: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    eps: &Tensor,
    lambda: f64,
) -> (Tensor, Tensor, Tensor) {
    let wasserstein = d.score(real).mean(Kind::Float) - d.score(fake).mean(Kind::Float);
    let penalty = gradient_penalty(|x| d.score(x), real, fake, eps);
    let loss = -&wasserstein + &penalty * lambda;
    (loss, wasserstein, penalty)
}

/// The generator's loss, −E[D(fake)].
pub fn generator_loss(d: &Discriminator, fake: &Tensor) -> Tensor {
    -d.score(fake).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

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
    fn low_dimensional_latent_decodes_to_volumes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 16,
            latent_dims: Some(3),
            generator_channels: 4,
            ..ModelConfig::default()
        };
        let g = Generator::new(&(vs.root() / "g"), &cfg);
        let v = g.volumes(&Tensor::from_slice(&[0.0f32, 1.0]));
        assert_eq!(v.size(), [2, 16, 16, 16]);
        assert_eq!(vs.variables()["g.latent_ends"].size(), [2, 3]);
        // The two ends give different volumes.
        let diff = (v.get(0) - v.get(1))
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert!(diff > 0.0);
    }

    #[test]
    fn generator_and_discriminator_have_the_right_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 16,
            latent_size: 8,
            generator_channels: 4,
            discriminator_channels: 4,
            ..ModelConfig::default()
        };
        let g = Generator::new(&(vs.root() / "g"), &cfg);
        let d = Discriminator::new(&(vs.root() / "d"), &cfg);
        let v = g.volumes(&Tensor::from_slice(&[0.0f32, 0.5, 1.0]));
        assert_eq!(v.size(), [3, 16, 16, 16]);
        assert!(v.min().double_value(&[]) >= 0.0);
        let s = d.score(&Tensor::zeros([5, 16, 16], (Kind::Float, Device::Cpu)));
        assert_eq!(s.size(), [5]);
        // The latent end points are saved but not trained.
        let trainable: Vec<String> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(k, _)| k)
            .collect();
        assert!(
            !trainable.iter().any(|k| k.contains("latent_ends")),
            "{trainable:?}"
        );
        assert!(vs.variables().contains_key("g.latent_ends"));
    }
}
