//! The generator G: volumes `[k][N][N][N]` for latent positions α, one of the
//! [`Architecture`]s, each holding just its own tensors.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::{Architecture, Latent, ModelConfig};

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
    /// The path: anchor volumes `[K][N][N][N]` and their positions on the segment `[K]`
    /// (increasing, not trained, saved with the weights).
    Path { anchors: Tensor, positions: Tensor },
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
            Architecture::Path => {
                let k = cfg.components.max(2) as i64;
                let anchors = path.var("anchors", &[k, n, n, n], nn::Init::Const(1e-3));
                let positions = path
                    .var("positions", &[k], nn::Init::Const(0.0))
                    .set_requires_grad(false);
                tch::no_grad(|| {
                    positions.shallow_clone().copy_(&cell_centres(&Tensor::full(
                        [k],
                        1.0 / k as f64,
                        (Kind::Float, device),
                    )));
                });
                Body::Path { anchors, positions }
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
            Body::Path { anchors, positions } => self.along_path(anchors, positions, alphas),
        }
    }

    /// The path's volumes at `alphas`: between the anchors around each α, linearly, and
    /// beyond the outer anchors along the first or last segment.
    fn along_path(&self, anchors: &Tensor, positions: &Tensor, alphas: &Tensor) -> Tensor {
        let k = positions.size()[0];
        let n = self.n;
        // Segment s (anchors s and s + 1) holds α when positions[s] ≤ α < positions[s + 1];
        // α before the second anchor takes the first segment, after the last but one the last.
        let inner = positions.narrow(0, 1, k - 2);
        let seg = alphas
            .unsqueeze(1)
            .ge_tensor(&inner.unsqueeze(0))
            .sum_dim_intlist(&[1i64][..], false, Kind::Int64);
        let lo = positions.index_select(0, &seg);
        let hi = positions.index_select(0, &(&seg + 1));
        let t = ((alphas - &lo) / (hi - &lo)).view([-1, 1, 1, 1]);
        let a = anchors.index_select(0, &seg);
        let b = anchors.index_select(0, &(&seg + 1));
        let v = &a + (b - &a) * t;
        debug_assert_eq!(v.size()[1..], [n, n, n]);
        self.masked(v.relu())
    }

    /// The mixture's probabilities πₖ, or `[1]` for the other generators.
    pub fn probabilities(&self) -> Tensor {
        match &self.body {
            Body::Mixture { logits, .. } => mixture_probabilities(logits),
            _ => Tensor::ones([1], (Kind::Float, self.device())),
        }
    }

    /// Sets the mixture's probabilities to `pi` `[K]` (positive, summing to 1), or the path's
    /// anchor positions to the centres of the cells of the cumulative `pi` (anchor k at
    /// Σ_{j<k} πⱼ + πₖ/2: the share of the continuum its class covers); no-op for the other
    /// generators.
    pub fn set_probabilities(&mut self, pi: &Tensor) {
        tch::no_grad(|| match &mut self.body {
            Body::Mixture { logits, .. } => {
                logits.copy_(&(pi.clamp_min(1e-6).log() / LOGIT_SCALE));
            }
            Body::Path { positions, .. } => {
                positions.copy_(&cell_centres(pi));
            }
            _ => {}
        });
    }

    /// The path's anchor positions on the segment (`None` for the other generators).
    pub fn anchor_positions(&self) -> Option<Tensor> {
        match &self.body {
            Body::Path { positions, .. } => Some(positions.detach()),
            _ => None,
        }
    }

    /// The device of the mask, or else of the single or base volume; the CPU for the CNN
    /// generator without a mask (whatever the device of its latent and network).
    fn device(&self) -> tch::Device {
        let volume = match &self.body {
            Body::Single { volume } => Some(volume),
            Body::Voxel { base, .. } | Body::Mixture { base, .. } => Some(base),
            Body::Path { anchors, .. } => Some(anchors),
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
            Body::Path { anchors, .. } if !heterogeneous => (
                self.masked(anchors.mean_dim(&[0i64][..], true, Kind::Float).relu()),
                None,
            ),
            Body::Path { anchors, positions } => (
                self.along_path(anchors, positions, &self.draw_alphas(count)),
                None,
            ),
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

    /// The mixture's components in proportion to its π, for a π held fixed: `count` draws at
    /// the systematic positions αⱼ = (j + u)/count (u ~ U(0, 1) from libtorch's generator),
    /// each the component whose cell of the cumulative π holds it, so that component k comes
    /// ⌊πₖ·count⌋ or ⌈πₖ·count⌉ times, with no importance weights. (The weights K·πₖ,
    /// multiplied over PacGAN's packs, make D's loss diverge when π is far from equal
    /// shares.) The path: its volumes at the same systematic positions, so that each anchor's
    /// cell is seen in its share. The other generators: [`Generator::batch`].
    pub fn stratified_batch(&self, count: i64) -> GeneratedBatch {
        match &self.body {
            Body::Mixture { .. } | Body::Path { .. } => {
                let device = self.device();
                let u = Tensor::rand([1], (Kind::Float, device));
                let alphas = (Tensor::arange(count, (Kind::Float, device)) + u) / count as f64;
                GeneratedBatch {
                    volumes: self.volumes(&alphas),
                    weights: None,
                }
            }
            _ => self.batch(count, true),
        }
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

/// The centres of the cells of the cumulative `pi` `[K]`: Σ_{j<k} πⱼ + πₖ/2.
fn cell_centres(pi: &Tensor) -> Tensor {
    pi.cumsum(0, Kind::Float) - pi * 0.5
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
    /// maps set the mixture's components (B₀ their mean weighted by the mixture's current π,
    /// Dₖ the differences, which needs `component_coarsening = 1`), so that each component
    /// is its map (where the map is ≥ 0 and inside the mask). The CNN generator has no voxels to set.
    pub fn init_volumes(&mut self, maps: &Tensor) -> Result<(), String> {
        let size = maps.size();
        let n = self.n;
        if size.len() != 4 || size[1..] != [n, n, n] {
            return Err(format!(
                "starting maps of shape {size:?}, expected [K][{n}][{n}][{n}]"
            ));
        }
        // The base volume, the components with whether they are the mixture's, and the
        // mixture's π.
        let (base, parts, pi) = match &mut self.body {
            Body::Cnn { .. } => return Err("the cnn generator cannot start from maps".into()),
            Body::Path { anchors, .. } => {
                if anchors.size() != size {
                    return Err(format!(
                        "{} starting maps, but the path has {} anchors",
                        size[0],
                        anchors.size()[0]
                    ));
                }
                tch::no_grad(|| {
                    anchors.copy_(&maps.clamp_min(0.0));
                });
                return Ok(());
            }
            Body::Single { volume } => (volume, None, None),
            Body::Voxel { base, parts, .. } => (base, Some((parts, false)), None),
            Body::Mixture {
                base,
                parts,
                logits,
            } => (
                base,
                Some((parts, true)),
                Some(mixture_probabilities(logits).detach()),
            ),
        };
        let k = size[0];
        tch::no_grad(|| {
            // B₀ is the maps' π-weighted mean, so that Dₖ − Σⱼ πⱼDⱼ = mapₖ − B₀ and each
            // component starts as its map whatever π (set before, e.g. held fixed).
            let mean = match &pi {
                Some(p) if p.size()[0] == k => {
                    (maps * p.view([-1, 1, 1, 1])).sum_dim_intlist(&[0i64][..], false, Kind::Float)
                }
                _ => maps.mean_dim(&[0i64][..], false, Kind::Float),
            };
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

    /// Restores the constraints after an optimiser step: the single (or base) volume is clamped
    /// to ≥ 0.
    pub fn project_constraints(&mut self) {
        tch::no_grad(|| match &mut self.body {
            Body::Single { volume: v }
            | Body::Voxel { base: v, .. }
            | Body::Mixture { base: v, .. }
            | Body::Path { anchors: v, .. } => {
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
