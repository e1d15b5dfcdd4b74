//! Expectation-maximisation over K class volumes with each image's pose marginalised, as
//! RELION's 3D classification does, computed as matrix products on libtorch.
//!
//! **E-step.** For a grid of `R` rotations and `S` in-plane offsets, every template
//! `t = slice(v_k, A_r)` is compared with every image through the two terms of
//! [`crate::images`]: `cross = [Re a, Im a]·[Re t, Im t]ᵀ` and `quad = q·|t|²ᵀ`, matrix products
//! of (images × frequencies) by (frequencies × templates). The posterior over (offset, class,
//! rotation) of image `i` is `softmax(cross − quad/2 + log π_k − log(S·R))`.
//!
//! **M-step.** The same posteriors weight the images into each template's slice:
//! `A = Wᵀ·a`, `D = Wᵀ·q` (again matrix products), which are back-projected into the `2N`
//! grid by the adjoint of the projector's trilinear sampling (autograd of
//! [`ForwardModel::sample_points`]), made Hermitian, and divided: `S = A / (D + 1/τ²)`, with
//! `τ²` the per-shell power of the previous class map times a fudge factor (Wiener). Each
//! half-set of images is accumulated apart, so every class has two independent half maps
//! whose FSC sets its resolution. π is the mean class posterior.

use mcg_forward::forward::ForwardModel;
use mcg_physics::Volume;
use mcg_physics::pose::Mat3;
use ndarray::Array3;
use tch::{Device, Kind, Tensor};

use crate::images::ImageTerms;

/// A grid of rotations on SO(3) (`mcg_eval::align::rotation_grid`: Fibonacci directions ×
/// in-plane angles) on the device.
#[derive(Debug)]
pub struct RotationGrid {
    /// The rotations, RELION matrices.
    pub matrices: Vec<Mat3>,
    /// The same, `[R][3][3]` float on the device.
    pub tensor: Tensor,
    /// The spacing asked for, degrees.
    pub step_deg: f64,
}

impl RotationGrid {
    /// The grid of spacing about `step_deg` on `device`.
    pub fn new(step_deg: f64, device: Device) -> Self {
        let matrices = mcg_eval::align::rotation_grid(step_deg);
        let flat: Vec<f32> = matrices
            .iter()
            .flat_map(|m| m.iter().flat_map(|row| row.iter().map(|&v| v as f32)))
            .collect();
        let tensor = Tensor::from_slice(&flat)
            .view([matrices.len() as i64, 3, 3])
            .to_device(device);
        Self {
            matrices,
            tensor,
            step_deg,
        }
    }

    /// A set of rotations (`[R][3][3]` on the device) with no grid behind it, such as each
    /// image's own pose.
    pub fn from_tensor(tensor: Tensor) -> Self {
        Self {
            matrices: Vec::new(),
            tensor,
            step_deg: 0.0,
        }
    }

    /// Number of rotations.
    pub fn len(&self) -> usize {
        self.tensor.size()[0] as usize
    }

    /// Whether the grid is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one pass over the images gives: the M-step's sums and each image's assignment.
#[derive(Debug)]
pub struct Expectation {
    /// Per half set `h`, `Σ_i w·a` per template, `[2][K·R][F]` complex.
    pub num: Tensor,
    /// Per half set, `Σ_i w·q` per template, `[2][K·R][F]`.
    pub den: Tensor,
    /// Each image's log-likelihood (pose, offset and class marginalised), nats, up to the
    /// Gaussian normalisation constant, which is the same for every model.
    pub log_likelihood: Vec<f64>,
    /// Each image's class posteriors, `[I][K]` on the CPU.
    pub class_posterior: Vec<Vec<f64>>,
    /// Each image's most probable (offset, class, rotation).
    pub best: Vec<[usize; 3]>,
    /// Each image's largest posterior over (offset, class, rotation).
    pub max_posterior: Vec<f64>,
}

/// The templates `[K·R][F]` (complex) of `volumes` (`[K][N][N][N]`) at every rotation of
/// `grid`, at the frequencies `freqs` (`[F][3]`).
pub fn templates(
    model: &ForwardModel,
    volumes: &Tensor,
    grid: &RotationGrid,
    freqs: &Tensor,
) -> Tensor {
    let k = volumes.size()[0];
    let r = grid.len() as i64;
    let spectra = model.spectra(volumes);
    let rotations = grid.tensor.repeat([k, 1, 1]);
    model.slice_points(&spectra, &rotations, r, freqs)
}

/// How many of each image's most probable (offset, class, rotation) the M-step counts; the
/// rest carry a negligible share of its posterior (RELION's "significant weights").
pub const SIGNIFICANT: i64 = 32;

/// The E-step over all images (and the M-step's sums): `templates` `[K·R][F]` from
/// [`templates`], `log_pi` the classes' log-probabilities, `ramps` `[S][F]` the offsets'
/// phase ramps, `half[i]` each image's half set (0 or 1). Images go through in batches of one
/// half set each, sized so that a batch's posteriors take about `batch_bytes`. The M-step's
/// sums count each image's [`SIGNIFICANT`] most probable templates, their posteriors
/// renormalised.
pub fn expectation(
    terms: &ImageTerms,
    half: &[u8],
    templates: &Tensor,
    log_pi: &[f64],
    ramps: &Tensor,
    batch_bytes: f64,
    cancelled: &dyn Fn() -> bool,
) -> Expectation {
    let device = templates.device();
    let kr = templates.size()[0];
    let f = templates.size()[1];
    let k = log_pi.len() as i64;
    let r = kr / k;
    let s = ramps.size()[0];
    let count = terms.len();
    let per_image = (s * kr) as f64 * 4.0 * 4.0;
    let batch = ((batch_bytes / per_image) as usize).clamp(1, 4096);
    let top = SIGNIFICANT.min(s * kr);

    // One matrix product gives the whole log-posterior: the images' rows
    // [Re a·o, Im a·o, −q/2, 1] against the templates' columns [Re t, Im t, |t|², log π − log SR].
    let prior: Vec<f32> = log_pi
        .iter()
        .flat_map(|&lp| std::iter::repeat_n((lp - ((s * r) as f64).ln()) as f32, r as usize))
        .collect();
    let prior = Tensor::from_slice(&prior).to_device(device).view([kr, 1]);
    let tt = Tensor::cat(
        &[
            templates.real(),
            templates.imag(),
            templates.abs().square(),
            prior,
        ],
        1,
    )
    .transpose(0, 1)
    .contiguous(); // [3F + 1][KR]
    let ramps_conj = ramps.narrow(1, 0, f).conj(); // [S][F]
    let mut num = Tensor::zeros([2 * kr, f], (Kind::ComplexFloat, device));
    let mut den = Tensor::zeros([2 * kr, f], (Kind::Float, device));
    let mut log_likelihood = vec![0.0; count];
    let mut class_posterior = vec![Vec::new(); count];
    let mut best = vec![[0usize; 3]; count];
    let mut max_posterior = vec![0.0; count];
    for h in 0..2u8 {
        let members: Vec<usize> = (0..count).filter(|&i| half[i] == h).collect();
        for chunk in members.chunks(batch) {
            if cancelled() {
                break;
            }
            let b = chunk.len() as i64;
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let rows = Tensor::from_slice(&idx).to_device(device);
            let sub = terms.select(&rows, f);
            let shifted = sub.a.unsqueeze(1) * ramps_conj.unsqueeze(0); // [B][S][F]
            let x = Tensor::cat(
                &[
                    shifted.real(),
                    shifted.imag(),
                    (&sub.q * -0.5).unsqueeze(1).expand([b, s, f], false),
                    Tensor::ones([b, s, 1], (Kind::Float, device)),
                ],
                2,
            )
            .view([b * s, 3 * f + 1]);
            let logp = x.matmul(&tt).view([b, s * kr]);
            let lse = logp.logsumexp([1i64].as_slice(), true); // [B][1]
            let constant = sub
                .yy
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                * 0.5;
            let ll = lse.squeeze_dim(1) - constant;
            let (top_logp, top_idx) = logp.topk(top, 1, true, true); // [B][top]
            let cls = (&logp - &lse).exp().view([b, s, k, r]).sum_dim_intlist(
                [1i64, 3].as_slice(),
                false,
                Kind::Float,
            );
            // The significant posteriors, renormalised.
            let w = (&top_logp - top_logp.logsumexp([1i64].as_slice(), true)).exp();
            let template = top_idx.remainder(kr) + i64::from(h) * kr; // [B][top]
            let offset = top_idx.divide_scalar_mode(kr, "floor"); // [B][top]
            let a_rep = sub.a.unsqueeze(1).expand([b, top, f], false);
            let ramp = ramps_conj
                .index_select(0, &offset.flatten(0, -1))
                .view([b, top, f]);
            let contrib = (a_rep * ramp) * w.unsqueeze(2);
            let qcontrib = sub.q.unsqueeze(1) * w.unsqueeze(2);
            let flat_t = template.flatten(0, -1);
            let _ = num.index_add_(0, &flat_t, &contrib.view([b * top, f]));
            let _ = den.index_add_(0, &flat_t, &qcontrib.view([b * top, f]));

            let ll: Vec<f64> = Vec::try_from(&ll.to_kind(Kind::Double)).unwrap_or_default();
            let p_max = (top_logp.select(1, 0) - lse.squeeze_dim(1)).exp();
            let p_max: Vec<f64> = Vec::try_from(&p_max.to_kind(Kind::Double)).unwrap_or_default();
            let arg: Vec<i64> = Vec::try_from(&top_idx.select(1, 0)).unwrap_or_default();
            let cls: Vec<f64> =
                Vec::try_from(&cls.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default();
            for (j, &i) in chunk.iter().enumerate() {
                log_likelihood[i] = ll[j];
                max_posterior[i] = p_max[j];
                let a = arg[j] as usize;
                let (o, rest) = (a / kr as usize, a % kr as usize);
                best[i] = [o, rest / r as usize, rest % r as usize];
                class_posterior[i] = cls[j * k as usize..(j + 1) * k as usize].to_vec();
            }
        }
    }
    Expectation {
        num: num.view([2, kr, f]),
        den: den.view([2, kr, f]),
        log_likelihood,
        class_posterior,
        best,
        max_posterior,
    }
}

/// The M-step's maps: each class's full map and its two half maps.
#[derive(Debug)]
pub struct Maps {
    /// `[K][N][N][N]` from all images.
    pub full: Tensor,
    /// `[2][K][N][N][N]`, from each half set.
    pub halves: Tensor,
}

/// The reconstruction of the M-step: `num` and `den` from [`expectation`] (templates of `K`
/// classes at `grid`'s rotations and frequencies `freqs`) back-projected, Hermitian-symmetrised
/// and divided with the Wiener term `1/(tau_fudge·P_k)`, `P_k` the per-shell power of
/// `previous` class `k`'s spectrum; nothing beyond `2·r_max` on the `2N` grid.
pub fn maximisation(
    model: &ForwardModel,
    grid: &RotationGrid,
    freqs: &Tensor,
    exp: &Expectation,
    previous: &Tensor,
    tau_fudge: f64,
    r_max: f64,
) -> Maps {
    let k = previous.size()[0];
    let n = model.box_size() as i64;
    let m = 2 * n;
    let r = grid.len() as i64;
    let f = freqs.size()[0];
    let device = previous.device();
    let leaf =
        Tensor::zeros([k, 6, m + 1, m + 1, m + 1], (Kind::Float, device)).set_requires_grad(true);
    let rotations = grid.tensor.repeat([k, 1, 1]);
    let sampled = model.sample_points(&leaf, &rotations, r, &(freqs * 2.0)); // [K][6][R][F]
    let mut channels = Vec::with_capacity(6);
    for h in 0..2 {
        let num = exp.num.get(h).view([k, r, f]);
        channels.push(num.real());
        channels.push(num.imag());
        channels.push(exp.den.get(h).view([k, r, f]));
    }
    let weights = Tensor::stack(&channels, 1);
    (sampled * weights).sum(Kind::Float).backward();
    let mut g = leaf.grad();
    // The periodic planes are copies of plane 0: their adjoint adds into it.
    for d in 2..5 {
        let _ = g.narrow(d, 0, 1).g_add_(&g.narrow(d, m, 1));
        g = g.narrow(d, 0, m);
    }
    let g = tch::no_grad(|| g.contiguous());
    let dims = [-3i64, -2, -1];
    let mirror = |x: &Tensor| x.flip(dims).roll([1i64, 1, 1], dims);
    let mut nums = Vec::with_capacity(2);
    let mut dens = Vec::with_capacity(2);
    for h in 0..2 {
        let num = Tensor::complex(&g.select(1, 3 * h), &g.select(1, 3 * h + 1));
        let den = g.select(1, 3 * h + 2);
        // Each stored coefficient stands for itself and its mate: ½ of the E-step's weight.
        nums.push((&num + mirror(&num).conj()) * 0.5);
        dens.push((&den + mirror(&den)) * 0.5);
    }
    let shells = shell_index(m, device);
    let power = shell_power(&model.centred_spectra(previous), &shells); // [K][shells]
    let reg = (power * tau_fudge)
        .clamp_min(1e-30)
        .reciprocal()
        .index_select(1, &shells.flatten(0, -1))
        .view([k, m, m, m]);
    let inside = shell_radius(m, device)
        .le(2.0 * r_max + 1.0)
        .to_kind(Kind::Float);
    let solve = |num: &Tensor, den: &Tensor| {
        let s = num / (den + &reg) * &inside;
        model.volumes_from_gridded(&s)
    };
    let full = solve(&(&nums[0] + &nums[1]), &(&dens[0] + &dens[1]));
    let halves = Tensor::stack(&[solve(&nums[0], &dens[0]), solve(&nums[1], &dens[1])], 0);
    Maps { full, halves }
}

/// The distance of each voxel of the centred `m` grid from its centre (index `m/2`), `[m]³`.
fn shell_radius(m: i64, device: Device) -> Tensor {
    let c = Tensor::arange(m, (Kind::Float, device)) - (m / 2) as f64;
    let c2 = c.square();
    (c2.view([m, 1, 1]) + c2.view([1, m, 1]) + c2.view([1, 1, m])).sqrt()
}

/// The shell (rounded radius) of each voxel of the centred `m` grid, `[m]³` int64.
fn shell_index(m: i64, device: Device) -> Tensor {
    shell_radius(m, device).round().to_kind(Kind::Int64)
}

/// The mean `|S|²` per shell of centred spectra `[K][m]³`, `[K][shells]`.
fn shell_power(spectra: &Tensor, shells: &Tensor) -> Tensor {
    let k = spectra.size()[0];
    let flat = shells.flatten(0, -1);
    let count = flat.bincount(None::<&Tensor>, 0).to_kind(Kind::Float);
    let nshell = count.size()[0];
    let power = spectra.abs().square().view([k, -1]);
    let mut rows = Vec::with_capacity(k as usize);
    for i in 0..k {
        let sums = flat
            .bincount(Some(&power.get(i)), nshell)
            .to_kind(Kind::Float);
        rows.push(sums / count.clamp_min(1.0));
    }
    Tensor::stack(&rows, 0)
}

/// A volume tensor `[N][N][N]` as a physics volume of `apix` Å.
pub fn to_volume(t: &Tensor, apix: f64) -> anyhow::Result<Volume> {
    let n = t.size()[0] as usize;
    let data: Vec<f32> = Vec::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))?;
    Ok(Volume::new(
        Array3::from_shape_vec((n, n, n), data)?,
        apix as f32,
    )?)
}

/// Physics volumes as a `[V][N][N][N]` tensor on `device`.
pub fn to_tensor(volumes: &[&Volume], device: Device) -> Tensor {
    let n = volumes[0].box_size() as i64;
    let parts: Vec<Tensor> = volumes
        .iter()
        .map(|v| {
            Tensor::from_slice(v.data().as_standard_layout().as_slice().unwrap_or(&[]))
                .view([n, n, n])
        })
        .collect();
    Tensor::stack(&parts, 0).to_device(device)
}

/// The frequencies' radius limit for a resolution: `r_max` pixels of the `N` grid for a map
/// good to `fraction` of Nyquist.
pub fn radius_of(fraction: f64, n: usize) -> f64 {
    fraction * n as f64 / 2.0
}
