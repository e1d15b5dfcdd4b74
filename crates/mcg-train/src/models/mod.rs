//! The models' settings (`ModelConfig`, read as one `Architecture`); the generator G
//! (`generator`: volumes from latent variables) and the discriminator D (`critic`: a score per
//! pack of images). The WGAN-GP losses are `crate::losses`'.

use serde::{Deserialize, Serialize};

mod critic;
mod generator;

pub use critic::Discriminator;
pub use generator::{GeneratedBatch, Generator, LOGIT_SCALE, sphere_mask};

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
    /// (`mixture`, for discrete landscapes), or a path through anchor volumes (`path`, for a
    /// continuum started from class maps).
    pub generator: GeneratorKind,
    /// Component volumes of the `voxel` and `mixture` generators; anchors of the `path`.
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
    /// Standard deviation of the components' random starting differences (density units, on
    /// their coarse grid).
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
    /// A continuum through `components` anchor volumes Aₖ at positions aₖ of the segment (the
    /// centres of the cumulative π's cells, see `Generator::set_probabilities`): v(α) is the
    /// linear interpolation between the two anchors around α, extrapolated along the first
    /// and last segments beyond the outer anchors, relu'd. Started from class maps ordered
    /// along the continuum, whose each map is the mean of its cell: for a family linear in α,
    /// the anchors at the cells' centres give back the whole family, its ends included.
    Path,
}

impl std::str::FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cnn" => Ok(Self::Cnn),
            "voxel" => Ok(Self::Voxel),
            "mixture" => Ok(Self::Mixture),
            "path" => Ok(Self::Path),
            other => Err(format!(
                "unknown generator {other:?}: expected cnn, voxel, mixture or path"
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
            Self::Path => "path",
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
    /// Multi mode's path through anchor volumes.
    Path,
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
            (Mode::Multi, GeneratorKind::Path) => Architecture::Path,
            (Mode::Multi, GeneratorKind::Cnn) => Architecture::Cnn(match self.latent_dims {
                Some(d) => Latent::Dims(d),
                None => Latent::Cube(self.latent_size),
            }),
        }
    }

    /// The paper's model: its 3D CNN generator, D's LeakyReLU slope of 0.01, one image per score.
    pub fn paper() -> Self {
        Self {
            generator: GeneratorKind::Cnn,
            leaky_slope: 0.01,
            pack: 1,
            component_init: 1e-3,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;
    use tch::nn;
    use tch::{Kind, Tensor};

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
        // Stratified (π held fixed): 8 draws, 2 of component 0 and 6 of component 1 whatever
        // the systematic offset, and no weights.
        for _ in 0..5 {
            let b = g.stratified_batch(8);
            assert!(b.weights.is_none());
            let means: Vec<f32> = b
                .volumes
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .try_into()
                .unwrap();
            let ones = means.iter().filter(|m| (*m - 1.0).abs() < 1e-5).count();
            let threes = means.iter().filter(|m| (*m - 3.0).abs() < 1e-5).count();
            assert_eq!((ones, threes), (2, 6), "{means:?}");
        }
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
    fn the_path_interpolates_between_its_anchors_and_extrapolates_beyond() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            box_size: 4,
            generator: GeneratorKind::Path,
            components: 3,
            spherical_mask: false,
            ..ModelConfig::default()
        };
        let mut g = Generator::new(&(vs.root() / "g"), &cfg);
        // Equal shares by default: anchors at the cells' centres 1/6, 1/2, 5/6.
        let at: Vec<f32> = g.anchor_positions().unwrap().try_into().unwrap();
        for (a, want) in at.iter().zip([1.0 / 6.0, 0.5, 5.0 / 6.0]) {
            assert!((a - want).abs() < 1e-6, "{at:?}");
        }
        // Anchors of constant 2, 4 and 10; π = (½, ¼, ¼) puts them at ¼, ⅝ and ⅞.
        let maps = Tensor::cat(
            &[2.0f64, 4.0, 10.0].map(|v| Tensor::full([1, 4, 4, 4], v, (Kind::Float, Device::Cpu))),
            0,
        );
        g.init_volumes(&maps).unwrap();
        g.set_probabilities(&Tensor::from_slice(&[0.5f32, 0.25, 0.25]));
        let mean_at = |g: &Generator, alphas: &[f32]| -> Vec<f32> {
            g.volumes(&Tensor::from_slice(alphas))
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .try_into()
                .unwrap()
        };
        // Hand-worked: at the anchors their maps; half-way between the first two 3, between
        // the last two 7; before the first anchor along the first segment (t = −⅔: 2 − 4/3),
        // after the last along the last (t = 1.5: 4 + 6·1.5).
        let got = mean_at(&g, &[0.25, 0.625, 0.875, 0.4375, 0.75, 0.0, 1.0]);
        for (v, want) in got.iter().zip([2.0, 4.0, 10.0, 3.0, 7.0, 2.0 / 3.0, 13.0]) {
            assert!((v - want).abs() < 1e-5, "{got:?}");
        }
        // Training batches: volumes along the path at random (or systematic) α, no weights;
        // the warm start is the anchors' mean.
        tch::manual_seed(1);
        for b in [g.batch(8, true), g.stratified_batch(8)] {
            assert_eq!(b.volumes.size(), [8, 4, 4, 4]);
            assert!(b.weights.is_none());
            let m: Vec<f32> = b
                .volumes
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .try_into()
                .unwrap();
            assert!(
                m.iter()
                    .all(|v| (2.0 / 3.0 - 1e-5..=13.0 + 1e-5).contains(v)),
                "{m:?}"
            );
        }
        let warm = g.batch(8, false).volumes;
        assert_eq!(warm.size(), [1, 4, 4, 4]);
        assert!((warm.mean(Kind::Float).double_value(&[]) - 16.0 / 3.0).abs() < 1e-5);
        // The gradient reaches the anchors around α and only them.
        g.volumes(&Tensor::from_slice(&[0.75f32]))
            .sum(Kind::Float)
            .backward();
        let grad = vs.variables()["g.anchors"].grad();
        let per_anchor: Vec<f32> = grad
            .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)
            .try_into()
            .unwrap();
        assert!(
            per_anchor[0] == 0.0
                && (per_anchor[1] - 32.0).abs() < 1e-4
                && (per_anchor[2] - 32.0).abs() < 1e-4,
            "{per_anchor:?}"
        );
        // Extrapolated below zero, the volume is cut at zero; the wrong number of maps is refused.
        let falling = Tensor::cat(
            &[5.0f64, 1.0, 0.0].map(|v| Tensor::full([1, 4, 4, 4], v, (Kind::Float, Device::Cpu))),
            0,
        );
        g.init_volumes(&falling).unwrap();
        assert_eq!(mean_at(&g, &[1.0]), [0.0]);
        let err = g.init_volumes(&maps.narrow(0, 0, 2)).unwrap_err();
        assert!(err.contains("3 anchors"), "{err}");
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
