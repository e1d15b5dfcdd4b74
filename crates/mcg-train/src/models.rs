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
#[serde(deny_unknown_fields, default)]
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
    /// small decoder (a linear layer to 4³ cells, then ×2 upsamplings with 3D convolutions:
    /// three, to 32³, for boxes up to 32, and as many more as reach the box beyond, so that the
    /// volume has the images' resolution). `None` (the default): the paper's latent.
    #[serde(default)]
    pub latent_dims: Option<usize>,
    /// Channels of G's hidden 3D convolutions.
    pub generator_channels: i64,
    /// Channels of D's first convolution (doubled at each of its strided layers).
    pub discriminator_channels: i64,
    /// Zero G's volumes outside the sphere of radius N/2.
    pub spherical_mask: bool,
    /// Multi mode's generator: the paper's 3D CNN (`cnn`), explicit voxel volumes weighted by a
    /// small network of α (`voxel`), or a mixture of voxel volumes with learnt weights
    /// (`mixture`, for discrete landscapes).
    pub generator: GeneratorKind,
    /// Component volumes of the `voxel` and `mixture` generators.
    pub components: usize,
    /// The component volumes live on a grid this many times coarser than the box (trilinearly
    /// upsampled): conformational differences are large-scale, and a coarse grid keeps the
    /// components from drifting apart in high-frequency noise. 1: full resolution.
    pub component_coarsening: usize,
    /// Negative slope of D's LeakyReLUs (the paper's: 0.01).
    pub leaky_slope: f64,
    /// PacGAN: D scores packs of this many independent images at once (as channels), so it can
    /// see a lack of diversity among the simulated images. 1: one image at a time.
    pub pack: usize,
    /// Conditional critic (multi mode's mixture generator only; ignored otherwise): D sees each
    /// image with its component, and a classifier Q, trained on simulated images whose
    /// component is known, names the component of each real image (drawn from its posterior
    /// under π). Each component is then held to the real images that look like it, and π is
    /// estimated from Q's outputs on the data (see [`crate::train::TrainConfig::pi_rate`]).
    /// Without it nothing tells apart a mixture's components that start alike.
    pub conditional: bool,
    /// Standard deviation of the components' random starting differences (density units, on
    /// their coarse grid). With the conditional critic use about 0.02 (a third of the Hsp90
    /// consensus's σ), large enough that its classifier can tell the components apart at once,
    /// so that each draws the real images that resemble it; 1e-3 (the default) otherwise.
    pub component_init: f64,
}

/// Which generator multi mode uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// The paper's: a latent segment z = (1 − α)·z₀ + α·z₁ through a 3D CNN.
    Cnn,
    /// v(α) = relu(B₀ + Σⱼ (wⱼ(α) − w̄ⱼ)·Bⱼ): a base volume and `components` component
    /// volumes, weighted by a small network of α about its mean w̄ over the segment.
    Voxel,
    /// `components` voxel volumes Bₖ = relu(B₀ + Dₖ − Σⱼ πⱼDⱼ) with learnt probabilities πₖ;
    /// α ∈ [0, 1] falls in
    /// component k's cell of the cumulative probabilities. Trained with exact expectations over
    /// the components, so the gradient reaches the probabilities.
    #[default]
    Mixture,
}

impl std::str::FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cnn" => Ok(Self::Cnn),
            "voxel" => Ok(Self::Voxel),
            "mixture" => Ok(Self::Mixture),
            other => Err(format!(
                "unknown generator {other:?}: expected cnn, voxel or mixture"
            )),
        }
    }
}

impl std::fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cnn => "cnn",
            Self::Voxel => "voxel",
            Self::Mixture => "mixture",
        })
    }
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
            generator: GeneratorKind::default(),
            components: 2,
            component_coarsening: 2,
            leaky_slope: 0.2,
            pack: 8,
            conditional: false,
            component_init: 1e-3,
        }
    }
}

/// What a [`ModelConfig`]'s generator is: its mode, multi mode's generator and the CNN's latent
/// read together (see [`ModelConfig::architecture`]), each variant with what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Single mode: one learnable volume.
    Single,
    /// Multi mode's 3D CNN on this latent.
    Cnn(Latent),
    /// Multi mode's voxel generator.
    Voxel,
    /// Multi mode's mixture of voxel volumes.
    Mixture,
}

/// The latent of multi mode's CNN generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latent {
    /// The paper's cube z ∈ R^{L³} of this edge L ([`ModelConfig::latent_size`]).
    Cube(usize),
    /// z ∈ R^d, d = [`ModelConfig::latent_dims`], through a small decoder.
    Dims(usize),
}

impl ModelConfig {
    /// The generator these settings describe (single mode ignores `generator` and the latent).
    pub fn architecture(&self) -> Architecture {
        match (self.mode, self.generator) {
            (Mode::Single, _) => Architecture::Single,
            (Mode::Multi, GeneratorKind::Voxel) => Architecture::Voxel,
            (Mode::Multi, GeneratorKind::Mixture) => Architecture::Mixture,
            (Mode::Multi, GeneratorKind::Cnn) => Architecture::Cnn(match self.latent_dims {
                Some(d) => Latent::Dims(d),
                None => Latent::Cube(self.latent_size),
            }),
        }
    }

    /// Whether D is conditional: [`ModelConfig::conditional`] with multi mode's mixture.
    pub fn is_conditional(&self) -> bool {
        self.conditional && self.architecture() == Architecture::Mixture
    }

    /// The paper's model: its 3D CNN generator, D's LeakyReLU slope of 0.01, one image per score.
    pub fn paper() -> Self {
        Self {
            generator: GeneratorKind::Cnn,
            leaky_slope: 0.01,
            pack: 1,
            conditional: false,
            component_init: 1e-3,
            ..Self::default()
        }
    }
}

/// The generator: volumes `[k][N][N][N]` for latent positions α (`[k]`, in [0, 1]).
#[derive(Debug)]
pub struct Generator {
    n: i64,
    /// What this generator is, with exactly the tensors and networks it needs.
    body: Body,
    mask: Option<Tensor>,
}

/// The parts of each generator (see [`Architecture`]).
#[derive(Debug)]
enum Body {
    /// Single mode: the one volume, kept ≥ 0 by projection.
    Single { volume: Tensor },
    /// Multi mode's CNN: fixed latent end points `[2][1][L][L][L]` (the paper's cube) or
    /// `[2][d]`, saved with the weights, and the network from z to a volume.
    Cnn { ends: Tensor, net: nn::Sequential },
    /// The voxel generator: the base volume B₀, the components Bⱼ `[K][M][M][M]` and w(α).
    Voxel {
        base: Tensor,
        parts: Tensor,
        net: nn::Sequential,
    },
    /// The mixture: the base volume B₀, the components Dₖ `[K][M][M][M]` (Bₖ = B₀ + Dₖ about
    /// their mean) and the logits `[K]` (π = softmax, see [`LOGIT_SCALE`]).
    Mixture {
        base: Tensor,
        parts: Tensor,
        logits: Tensor,
    },
}

/// The mixture's logits are this times its stored parameters (see [`Generator::probabilities`]).
pub const LOGIT_SCALE: f64 = 10.0;

/// The volumes of one training batch: `volumes` `[V][N][N][N]`, each to be seen at `B / V`
/// poses, and (mixture) the importance weight of each, K·πₖ, whose mean over a balanced batch
/// is 1 and through which the gradient reaches the probabilities.
#[derive(Debug)]
pub struct GeneratedBatch {
    /// The distinct volumes.
    pub volumes: Tensor,
    /// Per-volume importance weights `[V]`, or `None` (every volume weighs 1).
    pub weights: Option<Tensor>,
}

impl Generator {
    /// Builds G under `path` of a var store. The latent end points are drawn from
    /// U(0, latent_scale) with libtorch's generator (seed it first) and registered as
    /// non-trainable variables, so checkpoints keep them.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let n = cfg.box_size as i64;
        let device = path.device();
        let mask = cfg.spherical_mask.then(|| sphere_mask(n, device));
        let body = match cfg.architecture() {
            Architecture::Single => {
                // Kept non-negative by projection after each update
                // ([`Generator::project_constraints`]), not by a ReLU, which would stop the
                // gradient of every voxel that once went below zero.
                let volume = path.var("volume", &[n, n, n], nn::Init::Const(1e-3));
                Body::Single { volume }
            }
            architecture @ (Architecture::Voxel | Architecture::Mixture) => {
                let k = cfg.components.max(1) as i64;
                let base = path.var("volume", &[n, n, n], nn::Init::Const(1e-3));
                let coarse = n / cfg.component_coarsening.max(1) as i64;
                // Small random differences, so that the components are not identical when the
                // heterogeneity starts (an exact tie is a saddle the gradients cannot leave).
                let parts = path.var(
                    "parts",
                    &[k, coarse, coarse, coarse],
                    nn::Init::Randn {
                        mean: 0.0,
                        stdev: cfg.component_init,
                    },
                );
                if architecture == Architecture::Voxel {
                    // w(α): 1 → 32 → 32 → K, tanh; the last layer starts at a moderate scale so
                    // that different α give different weights from the first step.
                    let net = nn::seq()
                        .add_fn(|a| a.view([-1, 1]))
                        .add(nn::linear(path / "w1", 1, 32, Default::default()))
                        .add_fn(|x| x.tanh())
                        .add(nn::linear(path / "w2", 32, 32, Default::default()))
                        .add_fn(|x| x.tanh())
                        .add(nn::linear(path / "w3", 32, k, Default::default()));
                    Body::Voxel { base, parts, net }
                } else {
                    let logits = path.var("logits", &[k], nn::Init::Const(0.0));
                    Body::Mixture {
                        base,
                        parts,
                        logits,
                    }
                }
            }
            Architecture::Cnn(latent) => {
                let shape = match latent {
                    Latent::Cube(l) => {
                        let l = l as i64;
                        vec![2, 1, l, l, l]
                    }
                    Latent::Dims(d) => vec![2, d as i64],
                };
                let ends = path
                    .var(
                        "latent_ends",
                        &shape,
                        nn::Init::Uniform {
                            lo: 0.0,
                            up: cfg.latent_scale,
                        },
                    )
                    .set_requires_grad(false);
                let c = cfg.generator_channels;
                let net = match latent {
                    Latent::Cube(_) => nn::seq()
                        .add(conv3(path / "c1", 1, c))
                        .add_fn(|x| x.leaky_relu())
                        .add(conv3(path / "c2", c, 2 * c))
                        .add_fn(|x| x.leaky_relu())
                        .add(conv3(path / "c3", 2 * c, c))
                        .add_fn(|x| x.leaky_relu())
                        .add(conv3(path / "c4", c, 1)),
                    Latent::Dims(d) => {
                        let d = d as i64;
                        let up = |x: &Tensor| {
                            let s = x.size()[2] * 2;
                            x.upsample_trilinear3d([s, s, s], false, None, None, None)
                        };
                        let mut seq = nn::seq()
                            .add(nn::linear(path / "l1", d, 2 * c * 64, Default::default()))
                            .add_fn(move |x| x.leaky_relu().view([-1, 2 * c, 4, 4, 4]))
                            .add_fn(up)
                            .add(conv3(path / "c1", 2 * c, c))
                            .add_fn(|x| x.leaky_relu())
                            .add_fn(up)
                            .add(conv3(path / "c2", c, c))
                            .add_fn(|x| x.leaky_relu());
                        // Beyond 32³, one more ×2 stage per doubling of the box (boxes up to
                        // 32 keep the three stages, and so their variables).
                        let mut edge = 16;
                        let mut stage = 0;
                        while edge * 2 < n {
                            seq = seq
                                .add_fn(up)
                                .add(conv3(path / format!("u{stage}"), c, c))
                                .add_fn(|x| x.leaky_relu());
                            edge *= 2;
                            stage += 1;
                        }
                        seq.add_fn(up).add(conv3(path / "c3", c, 1))
                    }
                };
                Body::Cnn { ends, net }
            }
        };
        Self { n, body, mask }
    }

    /// The volumes at latent positions `alphas` (`[k]`), non-negative.
    pub fn volumes(&self, alphas: &Tensor) -> Tensor {
        match &self.body {
            Body::Single { volume } => self.single(volume, alphas.size()[0]),
            Body::Cnn { ends, net } => self.decoded(ends, net, alphas),
            Body::Voxel { base, parts, net } => self.weighted(base, parts, net, alphas, true),
            Body::Mixture {
                base,
                parts,
                logits,
            } => {
                // Component k covers α in [Σ_{i<k} πᵢ, Σ_{i≤k} πᵢ).
                let cum = mixture_probabilities(logits).cumsum(0, Kind::Float);
                let k = cum.size()[0];
                let idx = alphas
                    .unsqueeze(1)
                    .ge_tensor(&cum.unsqueeze(0))
                    .sum_dim_intlist(&[1i64][..], false, Kind::Int64)
                    .clamp_max(k - 1);
                self.components(base, parts, logits).index_select(0, &idx)
            }
        }
    }

    /// The mixture's probabilities πₖ, or `[1]` for the other generators.
    pub fn probabilities(&self) -> Tensor {
        match &self.body {
            Body::Mixture { logits, .. } => mixture_probabilities(logits),
            _ => Tensor::ones([1], (Kind::Float, self.device())),
        }
    }

    /// Sets the mixture's probabilities to `pi` `[K]` (positive, summing to 1); no-op for the
    /// other generators.
    pub fn set_probabilities(&mut self, pi: &Tensor) {
        if let Body::Mixture { logits, .. } = &mut self.body {
            tch::no_grad(|| {
                logits.copy_(&(pi.clamp_min(1e-6).log() / LOGIT_SCALE));
            });
        }
    }

    /// The device of the mask, or else of the single or base volume; the CPU for the CNN
    /// generator without a mask (whatever the device of its latent and network).
    fn device(&self) -> tch::Device {
        let volume = match &self.body {
            Body::Single { volume } => Some(volume),
            Body::Voxel { base, .. } | Body::Mixture { base, .. } => Some(base),
            Body::Cnn { .. } => None,
        };
        self.mask
            .as_ref()
            .or(volume)
            .map(|t| t.device())
            .unwrap_or(tch::Device::Cpu)
    }

    /// The mixture's component volumes `[K][N][N][N]`, relu(B₀ + Dₖ − Σⱼ πⱼDⱼ).
    fn components(&self, base: &Tensor, parts: &Tensor, logits: &Tensor) -> Tensor {
        let parts = &self.fine_parts(parts);
        // Dₖ about their π-weighted mean: B₀ is the consensus, and each Dₖ's gradient is its
        // component's gradient minus the mixture's (πₖ·(gₖ − Σⱼ πⱼgⱼ)), so Adam normalises the
        // differences between the components rather than the common gradient, in which they
        // would drown.
        let mean = weighted_mean(parts, logits);
        self.masked((base.unsqueeze(0) + parts - mean).relu())
    }

    /// The component volumes `parts` at the box's resolution, `[K][N][N][N]`.
    fn fine_parts(&self, parts: &Tensor) -> Tensor {
        let n = self.n;
        if parts.size()[1] == n {
            return parts.shallow_clone();
        }
        parts
            .unsqueeze(1)
            .upsample_trilinear3d([n, n, n], false, None, None, None)
            .squeeze_dim(1)
    }

    fn masked(&self, v: Tensor) -> Tensor {
        match &self.mask {
            Some(m) => v * m,
            None => v,
        }
    }

    /// The distinct volumes of one training batch of `count` volume draws (see
    /// [`GeneratedBatch`]): the one volume (single mode), the K components once each with
    /// their weights (mixture), whatever `count`; or `count` volumes at α ~ U(0, 1) (libtorch's
    /// generator). `heterogeneous = false` is the warm start: the mixture gives its base volume
    /// B₀ alone, the voxel generator B₀ at every α.
    pub fn batch(&self, count: i64, heterogeneous: bool) -> GeneratedBatch {
        let (volumes, weights) = match &self.body {
            Body::Single { volume } => (self.single(volume, 1), None),
            Body::Mixture { base, .. } if !heterogeneous => (self.masked(base.unsqueeze(0)), None),
            Body::Mixture {
                base,
                parts,
                logits,
            } => {
                let comps = self.components(base, parts, logits);
                let k = comps.size()[0];
                (comps, Some(mixture_probabilities(logits) * k as f64))
            }
            Body::Cnn { ends, net } => (self.decoded(ends, net, &self.draw_alphas(count)), None),
            Body::Voxel { base, parts, net } => {
                let alphas = self.draw_alphas(count);
                (
                    self.weighted(base, parts, net, &alphas, heterogeneous),
                    None,
                )
            }
        };
        GeneratedBatch { volumes, weights }
    }

    /// `count` latent positions α ~ U(0, 1) from libtorch's generator.
    fn draw_alphas(&self, count: i64) -> Tensor {
        Tensor::rand([count], (Kind::Float, self.device()))
    }

    /// The single volume `k` times, `[k][N][N][N]`.
    fn single(&self, volume: &Tensor, k: i64) -> Tensor {
        let n = self.n;
        self.masked(volume.unsqueeze(0).expand([k, n, n, n], false))
    }

    /// The CNN's volumes at `alphas`: the latent segment's points through the network.
    fn decoded(&self, ends: &Tensor, net: &nn::Sequential, alphas: &Tensor) -> Tensor {
        let k = alphas.size()[0];
        let n = self.n;
        // One α per volume, broadcast over the latent's dimensions.
        let mut shape = vec![k];
        shape.extend(std::iter::repeat_n(1, ends.dim() - 1));
        let a = alphas.view(shape.as_slice());
        let rest = -&a + 1.0;
        let z = ends.get(0).unsqueeze(0) * rest + ends.get(1).unsqueeze(0) * &a;
        let mut out = net.forward(&z);
        if out.size()[2] != n {
            out = out.upsample_trilinear3d([n, n, n], false, None, None, None);
        }
        // Softplus, not ReLU: a ReLU output dies for good once every voxel of it goes
        // negative (seen: the whole volume collapsed to zero within minutes of training).
        self.masked(out.squeeze_dim(1).softplus())
    }

    /// The voxel generator's volumes at `alphas`; B₀ at every α if not `heterogeneous`.
    fn weighted(
        &self,
        base: &Tensor,
        parts: &Tensor,
        net: &nn::Sequential,
        alphas: &Tensor,
        heterogeneous: bool,
    ) -> Tensor {
        let k = alphas.size()[0];
        let n = self.n;
        let raw = if !heterogeneous {
            base.unsqueeze(0).expand([k, n, n, n], false)
        } else {
            let parts = &self.fine_parts(parts);
            // w(α) about its mean over the segment (16 cell midpoints), so that B₀ is
            // the consensus and the components' gradients are the differences along α
            // (see `components`).
            let grid = (Tensor::arange(16, (Kind::Float, alphas.device())) + 0.5) / 16.0;
            let w_mean = net.forward(&grid).mean_dim(&[0i64][..], true, Kind::Float);
            let w = net.forward(alphas) - w_mean;
            let c = parts.size()[0];
            let mix = w.matmul(&parts.view([c, -1])).view([k, n, n, n]);
            base.unsqueeze(0) + mix
        };
        // B₀ is kept ≥ 0 by projection, so only the component part can be cut here.
        self.masked(raw.relu())
    }
}

/// The mixture's probabilities π = softmax(LOGIT_SCALE · `logits`).
fn mixture_probabilities(logits: &Tensor) -> Tensor {
    // The logits are stored divided by LOGIT_SCALE, so that Adam's steps of about lr per
    // update move them LOGIT_SCALE times faster than a voxel: 25/75 needs a logit
    // difference of ln 3 ≈ 1.1, which at lr = 1e-3 would take over a thousand steps.
    (logits * LOGIT_SCALE).softmax(0, Kind::Float)
}

/// Σⱼ πⱼ·`parts`ⱼ `[1][…]`, the components' mean under the mixture's (detached) probabilities.
fn weighted_mean(parts: &Tensor, logits: &Tensor) -> Tensor {
    let pi = mixture_probabilities(logits).detach();
    (parts * pi.view([-1, 1, 1, 1])).sum_dim_intlist(&[0i64][..], true, Kind::Float)
}

impl Generator {
    /// Sets the volumes from maps `[K][N][N][N]`: one map sets the single or base volume; K
    /// maps set the mixture's components (B₀ their mean, Dₖ the differences, which needs
    /// `component_coarsening = 1`). The CNN generator has no voxels to set.
    pub fn init_volumes(&mut self, maps: &Tensor) -> Result<(), String> {
        let size = maps.size();
        let n = self.n;
        if size.len() != 4 || size[1..] != [n, n, n] {
            return Err(format!(
                "starting maps of shape {size:?}, expected [K][{n}][{n}][{n}]"
            ));
        }
        // The base volume, and the components with whether they are the mixture's.
        let (base, parts) = match &mut self.body {
            Body::Cnn { .. } => return Err("the cnn generator cannot start from maps".into()),
            Body::Single { volume } => (volume, None),
            Body::Voxel { base, parts, .. } => (base, Some((parts, false))),
            Body::Mixture { base, parts, .. } => (base, Some((parts, true))),
        };
        let k = size[0];
        tch::no_grad(|| {
            let mean = maps.mean_dim(&[0i64][..], false, Kind::Float);
            base.copy_(&mean.clamp_min(0.0));
            if k == 1 {
                return Ok(());
            }
            let Some((parts, mixture)) = parts else {
                return Err(format!("{k} starting maps, but single mode has one volume"));
            };
            if !mixture || parts.size() != size {
                return Err(format!(
                    "{k} starting maps need the mixture generator with {k} components at \
                     component_coarsening 1 (its components are {:?})",
                    parts.size()
                ));
            }
            parts.copy_(&(maps - mean.unsqueeze(0)));
            Ok(())
        })
    }

    /// Starts the mixture's components as the base volume dilated about the box centre by
    /// factors spread evenly over 1 − `delta` ..= 1 + `delta` (mass kept), from the most
    /// compact to the most extended: a split along the particle's extent, the direction in
    /// which conformations most often differ and which the pose-free statistics see best
    /// (a projection's radial profile). No-op for the other generators or `delta` = 0.
    pub fn split_by_dilation(&mut self, delta: f64) {
        if delta == 0.0 {
            return;
        }
        let Body::Mixture { base, parts, .. } = &mut self.body else {
            return;
        };
        let k = parts.size()[0];
        let coarse = parts.size()[1];
        let n = self.n;
        tch::no_grad(|| {
            let device = base.device();
            let input = base
                .clamp_min(0.0)
                .view([1, 1, n, n, n])
                .expand([k, 1, n, n, n], true);
            let scales: Vec<f32> = (0..k)
                .map(|i| {
                    let t = if k == 1 {
                        0.0
                    } else {
                        2.0 * i as f64 / (k - 1) as f64 - 1.0
                    };
                    (1.0 + delta * t) as f32
                })
                .collect();
            // grid_sample's output point x reads the input at x / s: a dilation by s. The
            // normalised coordinates with align_corners = false put the centre between the
            // two middle voxels, half a voxel from the box centre N/2; shifting the grid by
            // half a voxel centres the dilation on N/2.
            let mut theta = vec![0f32; (k * 12) as usize];
            let half = 1.0 / n as f64;
            for (i, s) in scales.iter().enumerate() {
                let inv = 1.0 / *s as f64;
                for d in 0..3 {
                    theta[i * 12 + d * 4 + d] = inv as f32;
                    theta[i * 12 + d * 4 + 3] = (half * (1.0 - inv)) as f32;
                }
            }
            let theta = Tensor::from_slice(&theta).view([k, 3, 4]).to_device(device);
            let grid = Tensor::affine_grid_generator(&theta, [k, 1, n, n, n], false);
            let dilated = input.grid_sampler(&grid, 0, 0, false).squeeze_dim(1)
                / Tensor::from_slice(&scales)
                    .to_device(device)
                    .pow_tensor_scalar(3)
                    .view([k, 1, 1, 1]);
            let diff = dilated - base.clamp_min(0.0).unsqueeze(0);
            let diff = if coarse == n {
                diff
            } else {
                diff.unsqueeze(1)
                    .adaptive_avg_pool3d([coarse, coarse, coarse])
                    .squeeze_dim(1)
            };
            parts.copy_(&diff);
        });
    }

    /// Spreading pressure on the components (voxel and mixture generators), applied to their
    /// gradients before the optimiser step: each component's gradient gets
    /// `−strength · rms(gradient) · dev / rms(dev)`, where dev is the component about the
    /// π-weighted mean of the components (mixture) or the component itself (voxel), so that
    /// the components drift apart at a rate set relative to the GAN's own gradient. Near the
    /// consensus the GAN's loss is flattest along the real heterogeneity (moving components
    /// along it keeps the simulated images realistic, moving them any other way does not), so
    /// a weak push separates them along it; beyond the true states the data push back.
    pub fn spread(&mut self, strength: f64) {
        if strength <= 0.0 {
            return;
        }
        // The components, with the mixture's logits.
        let (parts, logits) = match &self.body {
            Body::Voxel { parts, .. } => (parts, None),
            Body::Mixture { parts, logits, .. } => (parts, Some(logits)),
            Body::Single { .. } | Body::Cnn { .. } => return,
        };
        let mut grad = parts.grad();
        if !grad.defined() {
            return;
        }
        tch::no_grad(|| {
            let dev = match logits {
                Some(logits) => parts - weighted_mean(parts, logits),
                None => parts.shallow_clone(),
            };
            let rms_dev = dev.square().mean(Kind::Float).sqrt().double_value(&[]);
            let rms_grad = grad.square().mean(Kind::Float).sqrt().double_value(&[]);
            if rms_dev > 0.0 && rms_grad > 0.0 {
                let push = dev * (strength * rms_grad / rms_dev);
                let _ = grad.g_sub_(&push);
            }
        });
    }

    /// Restores the constraints after an optimiser step: the single (or base) volume is clamped
    /// to ≥ 0.
    pub fn project_constraints(&mut self) {
        tch::no_grad(|| match &mut self.body {
            Body::Single { volume: v }
            | Body::Voxel { base: v, .. }
            | Body::Mixture { base: v, .. } => {
                let _ = v.clamp_min_(0.0);
            }
            Body::Cnn { .. } => {}
        });
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
    pack: i64,
}

/// D's and Q's 2D CNN: three strided 4×4 convolutions with LeakyReLUs and a linear layer to
/// `outputs` scores, on inputs of `channels` planes of `n`² (consecutive rows of the input
/// are gathered into them).
fn critic_net(path: &nn::Path, cfg: &ModelConfig, channels: i64, outputs: i64) -> nn::Sequential {
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
    let slope = cfg.leaky_slope;
    let act = move |x: &Tensor| x.maximum(&(x * slope));
    nn::seq()
        .add_fn(move |x| x.view([-1, channels, n, n]))
        .add(strided(path / "c1", channels, c))
        .add_fn(act)
        .add(strided(path / "c2", c, 2 * c))
        .add_fn(act)
        .add(strided(path / "c3", 2 * c, 4 * c))
        .add_fn(act)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            path / "out",
            4 * c * side * side,
            outputs,
            Default::default(),
        ))
}

impl Discriminator {
    /// Builds D for `n`² images under `path`.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let pack = cfg.pack.max(1) as i64;
        let planes = if cfg.is_conditional() {
            1 + cfg.components as i64
        } else {
            1
        };
        let net = critic_net(path, cfg, pack * planes, 1);
        Self { net, pack }
    }

    /// Images per score (PacGAN's pack size).
    pub fn pack(&self) -> usize {
        self.pack as usize
    }

    /// Scores `[B / pack]` of images `[B][N][N]` (consecutive images form a pack), or, for a
    /// conditional D, of images with their components' planes `[B][1 + K][N][N]` (see
    /// [`with_components`]).
    pub fn score(&self, images: &Tensor) -> Tensor {
        self.net.forward(images).squeeze_dim(1)
    }
}

/// Images `[B][N][N]` with their components `[B][K]` (one-hot rows, or zeros for none) as
/// constant planes: `[B][1 + K][N][N]`, a conditional D's input.
pub fn with_components(images: &Tensor, components: &Tensor) -> Tensor {
    let s = images.size();
    let k = components.size()[1];
    let planes = components
        .view([s[0], k, 1, 1])
        .expand([s[0], k, s[1], s[2]], false);
    Tensor::cat(&[images.unsqueeze(1), planes], 1)
}

/// The classifier Q of a conditional critic (see [`ModelConfig::conditional`]): the logits
/// `[B][K]` of an image's component, under equal prior probabilities (it is trained on
/// balanced batches of simulated images); and the running means from which π is estimated
/// (see [`crate::train::TrainConfig::pi_rate`]), kept with the weights.
#[derive(Debug)]
pub struct Classifier {
    net: nn::Sequential,
    /// Running mean of Q's output on real images, `[K]`.
    real_output: Tensor,
    /// Running mean of Q's output on simulated images of each component, `[K][K]` (row: the
    /// output, column: the component).
    confusion: Tensor,
}

impl Classifier {
    /// Builds Q for `n`² images and `cfg.components` components under `path`.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let k = cfg.components as i64;
        let real_output = path.zeros_no_train("real_output", &[k]);
        let confusion = path.zeros_no_train("confusion", &[k, k]);
        tch::no_grad(|| {
            let _ = real_output.shallow_clone().fill_(1.0 / k as f64);
            let _ = confusion.shallow_clone().fill_(1.0 / k as f64);
        });
        Self {
            net: critic_net(path, cfg, 1, k),
            real_output,
            confusion,
        }
    }

    /// Component logits `[B][K]` of images `[B][N][N]`.
    pub fn logits(&self, images: &Tensor) -> Tensor {
        self.net.forward(images)
    }

    /// Takes `rate` of this step's mean outputs on real images (`[K]`) and on simulated images
    /// of each component (`[K][K]`) into the running means, and returns π = C⁻¹μ from them
    /// (clipped to at least 1 %, normalised), or `None` while Q cannot yet tell the components
    /// apart (C's mean diagonal less than `separation` above its mean off-diagonal entry).
    pub fn update_shift(
        &mut self,
        real: &Tensor,
        confusion: &Tensor,
        rate: f64,
        separation: f64,
    ) -> Option<Tensor> {
        tch::no_grad(|| {
            let keep = 1.0 - rate;
            self.real_output
                .copy_(&(&self.real_output * keep + real * rate));
            self.confusion
                .copy_(&(&self.confusion * keep + confusion * rate));
            let k = self.confusion.size()[0];
            let diag = self
                .confusion
                .diagonal(0, 0, 1)
                .mean(Kind::Float)
                .double_value(&[]);
            let off = (self.confusion.sum(Kind::Float).double_value(&[]) - diag * k as f64)
                / (k * k - k) as f64;
            if diag - off < separation {
                return None;
            }
            let pi = Tensor::linalg_solve(
                &self.confusion.to_kind(Kind::Double),
                &self.real_output.to_kind(Kind::Double).unsqueeze(1),
                true,
            )
            .squeeze_dim(1)
            .clamp_min(0.01);
            let pi = &pi / pi.sum(Kind::Double);
            Some(pi.to_kind(Kind::Float))
        })
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
    fn the_mixture_maps_alpha_to_components_by_their_probabilities() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 8,
            generator: GeneratorKind::Mixture,
            components: 2,
            spherical_mask: false,
            ..ModelConfig::default()
        };
        let mut g = Generator::new(&(vs.root() / "g"), &cfg);
        let mut vars = vs.variables();
        tch::no_grad(|| {
            // π = (0.25, 0.75), D = (0, 2): the weighted mean of D is 1.5, so with B₀ = 2.5
            // component 0 is 1 everywhere and component 1 is 3.
            let _ = vars.get_mut("g.volume").unwrap().fill_(2.5);
            let parts = vars.get_mut("g.parts").unwrap();
            let _ = parts.get(0).fill_(0.0);
            let _ = parts.get(1).fill_(2.0);
            let logits = vars.get_mut("g.logits").unwrap();
            logits.copy_(&Tensor::from_slice(&[
                0.0f32,
                3f32.ln() / LOGIT_SCALE as f32,
            ]));
        });
        let v = g.volumes(&Tensor::from_slice(&[0.0f32, 0.2, 0.3, 0.99]));
        let means: Vec<f32> = v
            .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
            .try_into()
            .unwrap();
        for (m, want) in means.iter().zip([1.0, 1.0, 3.0, 3.0]) {
            assert!((m - want).abs() < 1e-5, "{means:?}");
        }
        // Training batches hold each component once, weighted K·πₖ; the warm start only B₀.
        let b = g.batch(8, true);
        assert_eq!(b.volumes.size(), [2, 8, 8, 8]);
        let w: Vec<f32> = b.weights.unwrap().try_into().unwrap();
        assert!(
            (w[0] - 0.5).abs() < 1e-6 && (w[1] - 1.5).abs() < 1e-6,
            "{w:?}"
        );
        let warm = g.batch(8, false);
        assert_eq!(warm.volumes.size(), [1, 8, 8, 8]);
        assert!(warm.weights.is_none());
        // The gradient reaches the probabilities through the weights.
        let loss = (g.batch(8, true).weights.unwrap() * Tensor::from_slice(&[1.0f32, -1.0]))
            .sum(Kind::Float);
        loss.backward();
        let grad = vs.variables()["g.logits"].grad();
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Components stay ≥ 0.
        tch::no_grad(|| {
            let _ = vars.get_mut("g.parts").unwrap().get(0).fill_(-5.0);
        });
        g.project_constraints();
        assert!(g.batch(8, true).volumes.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn a_dilation_split_makes_a_compact_and_an_extended_component_about_the_centre() {
        // A Gaussian blob of σ 2.5 voxels at the centre (16, 16, 16) of a 32³ box, components
        // at full resolution and on a 16³ grid: dilated by 0.9 and 1.1, each component keeps
        // the mass, stays centred, and has 0.9 and 1.1 times the blob's radius of gyration.
        let n = 32i64;
        let axis = Tensor::arange(n, (Kind::Float, Device::Cpu)) - 16.0;
        let (z, y, x) = (
            axis.view([n, 1, 1]).expand([n, n, n], false),
            axis.view([1, n, 1]).expand([n, n, n], false),
            axis.view([1, 1, n]).expand([n, n, n], false),
        );
        let r2 = &z * &z + &y * &y + &x * &x;
        let blob = (&r2 / (-2.0 * 2.5 * 2.5)).exp();
        let stats = |v: &Tensor| -> (f64, f64, f64) {
            let m = v.sum(Kind::Double).double_value(&[]);
            let cz = (v * &z).sum(Kind::Double).double_value(&[]) / m;
            let rg = ((v * &r2).sum(Kind::Double).double_value(&[]) / m).sqrt();
            (m, cz, rg)
        };
        let (m0, _, rg0) = stats(&blob);
        for coarsening in [1, 2] {
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = ModelConfig {
                box_size: n as usize,
                generator: GeneratorKind::Mixture,
                components: 2,
                component_coarsening: coarsening,
                spherical_mask: false,
                ..ModelConfig::default()
            };
            let mut g = Generator::new(&(vs.root() / "g"), &cfg);
            let mut vars = vs.variables();
            tch::no_grad(|| vars.get_mut("g.volume").unwrap().copy_(&blob));
            g.split_by_dilation(0.1);
            let comps = g.batch(4, true).volumes;
            let tol = if coarsening == 1 { 0.01 } else { 0.03 };
            for (i, want) in [0.9, 1.1].iter().enumerate() {
                let (m, cz, rg) = stats(&comps.get(i as i64));
                assert!(
                    (m / m0 - 1.0).abs() < tol,
                    "component {i}: mass {m} against {m0}"
                );
                assert!(cz.abs() < 0.02, "component {i}: centre moved to z = {cz}");
                assert!(
                    (rg / rg0 - want).abs() < 2.0 * tol,
                    "coarsening {coarsening}, component {i}: Rg ratio {} against {want}",
                    rg / rg0
                );
            }
        }
    }

    #[test]
    fn the_voxel_generator_varies_with_alpha_after_its_warm_start() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 8,
            generator: GeneratorKind::Voxel,
            components: 3,
            ..ModelConfig::default()
        };
        let g = Generator::new(&(vs.root() / "g"), &cfg);
        let mut vars = vs.variables();
        tch::no_grad(|| {
            let _ = vars.get_mut("g.volume").unwrap().fill_(1.0);
            let _ = vars.get_mut("g.parts").unwrap().fill_(0.01);
        });
        let v = g.volumes(&Tensor::from_slice(&[0.0f32, 1.0]));
        assert_eq!(v.size(), [2, 8, 8, 8]);
        let diff = (v.get(0) - v.get(1))
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert!(diff > 0.0);
        assert!(v.min().double_value(&[]) >= 0.0);
        // The warm start gives the base volume at every α.
        tch::manual_seed(0);
        let warm = g.batch(4, false).volumes;
        let spread = (warm.get(0) - warm.get(3))
            .abs()
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(spread, 0.0);
    }

    #[test]
    fn low_dimensional_latent_decodes_to_volumes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 16,
            latent_dims: Some(3),
            generator_channels: 4,
            ..ModelConfig::paper()
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
            ..ModelConfig::paper()
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
