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

/// A local refinement of a coarse grid's search: every rotation of a fine grid belongs to its
/// nearest rotation of the coarse one, so that an image's most probable coarse rotations
/// name the fine rotations worth scoring (RELION's adaptive oversampling).
#[derive(Debug)]
pub struct Refinement {
    /// The fine rotations nearest to each coarse one, `[Rc][C]` int64, padded with 0.
    pub children: Tensor,
    /// Which entries of `children` are real, `[Rc][C]` bool.
    pub valid: Tensor,
    /// Rotations in the fine grid.
    pub fine: usize,
}

impl Refinement {
    /// The partition of `fine`'s rotations among their nearest rotations of `coarse`
    /// (largest `|⟨q_f, q_c⟩|` of their unit quaternions).
    pub fn new(coarse: &RotationGrid, fine: &RotationGrid) -> Self {
        let quats = |g: &RotationGrid| {
            let flat: Vec<f32> = g
                .matrices
                .iter()
                .flat_map(|m| mcg_physics::pose::quaternion_from_matrix(m).map(|v| v as f32))
                .collect();
            Tensor::from_slice(&flat).view([g.matrices.len() as i64, 4])
        };
        let (qc, qf) = (quats(coarse), quats(fine));
        let rc = coarse.matrices.len();
        let mut parent = Vec::with_capacity(fine.matrices.len());
        for chunk in qf.split(4096, 0) {
            let nearest: Vec<i64> =
                Vec::try_from(&chunk.matmul(&qc.tr()).abs().argmax(1, false)).unwrap_or_default();
            parent.extend(nearest);
        }
        let mut lists = vec![Vec::new(); rc];
        for (f, &p) in parent.iter().enumerate() {
            lists[p as usize].push(f as i64);
        }
        let width = lists.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut children = vec![0i64; rc * width];
        let mut valid = vec![false; rc * width];
        for (c, list) in lists.iter().enumerate() {
            for (j, &f) in list.iter().enumerate() {
                children[c * width + j] = f;
                valid[c * width + j] = true;
            }
        }
        let device = coarse.tensor.device();
        Self {
            children: Tensor::from_slice(&children)
                .view([rc as i64, width as i64])
                .to_device(device),
            valid: Tensor::from_slice(&valid)
                .view([rc as i64, width as i64])
                .to_device(device),
            fine: fine.matrices.len(),
        }
    }
}

/// The fine templates and the partition of a local search (see [`expectation`]).
#[derive(Debug)]
pub struct Local<'a> {
    /// The templates `[K·Rf][F]` at the fine grid's rotations.
    pub fine: &'a Tensor,
    /// The fine rotations of each coarse one.
    pub refinement: &'a Refinement,
    /// How many of each image's most probable coarse (offset, class, rotation) are refined.
    pub top: i64,
}

/// The E-step over all images (and the M-step's sums): `templates` `[K·R][F]` from
/// [`templates`], `log_pi` the classes' log-probabilities, `ramps` `[S][F]` the offsets'
/// phase ramps, `half[i]` each image's half set (0 or 1). Images go through in batches of one
/// half set each, sized so that a batch's posteriors take about `batch_bytes`. The M-step's
/// sums count each image's [`SIGNIFICANT`] most probable templates, their posteriors
/// renormalised.
///
/// With `local`, `templates` are a coarse grid's and every index of the result is the fine
/// grid's: each image's `local.top` most probable coarse (offset, class, rotation) are
/// replaced by the fine rotations nearest to them, and its posterior is spread over those
/// alone (the rest of the fine grid is taken to carry no weight).
#[allow(clippy::too_many_arguments)]
pub fn expectation(
    terms: &ImageTerms,
    half: &[u8],
    templates: &Tensor,
    log_pi: &[f64],
    ramps: &Tensor,
    batch_bytes: f64,
    local: Option<&Local<'_>>,
    cancelled: &dyn Fn() -> bool,
) -> Expectation {
    let device = templates.device();
    let f = templates.size()[1];
    let k = log_pi.len() as i64;
    let r = templates.size()[0] / k;
    let s = ramps.size()[0];
    let count = terms.len();
    // The rotations of the result's index space, and its templates' count.
    let r_out = local.map_or(r, |l| l.refinement.fine as i64);
    let kr = k * r_out;
    let width = local.map_or(0, |l| l.refinement.children.size()[1]);
    let per_image = match local {
        None => (s * k * r) as f64 * 4.0 * 4.0,
        Some(l) => {
            (s * k * r) as f64 * 4.0 * 2.0 + (l.top * width * (3 * f + 1)) as f64 * 4.0 * 3.0
        }
    };
    let batch = ((batch_bytes / per_image) as usize).clamp(1, 4096);

    // One matrix product gives the whole log-posterior: the images' rows
    // [Re a·o, Im a·o, −q/2, 1] against the templates' columns [Re t, Im t, |t|², log π − log SR].
    let columns = |t: &Tensor, rotations: i64| {
        let prior: Vec<f32> = log_pi
            .iter()
            .flat_map(|&lp| {
                std::iter::repeat_n((lp - ((s * r_out) as f64).ln()) as f32, rotations as usize)
            })
            .collect();
        let prior = Tensor::from_slice(&prior)
            .to_device(device)
            .view([k * rotations, 1]);
        Tensor::cat(&[t.real(), t.imag(), t.abs().square(), prior], 1) // [KR][3F + 1]
    };
    let tt = columns(templates, r).transpose(0, 1).contiguous(); // [3F + 1][KR]
    let fine_rows = local.map(|l| columns(l.fine, r_out)); // [K·Rf][3F + 1]
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
            let coarse = x.matmul(&tt).view([b, s * k * r]);
            // Each candidate's log-posterior and its (offset, template) in the result's index
            // space: the whole grid, or each image's refined neighbourhoods.
            let (logp, cand_template, cand_offset) = match (local, &fine_rows) {
                (Some(l), Some(fine_rows)) => {
                    let (_, top_idx) = coarse.topk(l.top.min(s * k * r), 1, true, true);
                    let offset = top_idx.divide_scalar_mode(k * r, "floor"); // [B][M]
                    let rest = top_idx.remainder(k * r);
                    let class = rest.divide_scalar_mode(r, "floor");
                    let rot = rest.remainder(r);
                    let m = top_idx.size()[1];
                    let children = l
                        .refinement
                        .children
                        .index_select(0, &rot.flatten(0, -1))
                        .view([b, m, width]);
                    let valid = l
                        .refinement
                        .valid
                        .index_select(0, &rot.flatten(0, -1))
                        .view([b, m * width]);
                    let template = (children + (class * r_out).unsqueeze(2)).view([b, m * width]);
                    let offset = offset
                        .unsqueeze(2)
                        .expand([b, m, width], false)
                        .reshape([b, m * width]);
                    let image_row =
                        Tensor::arange(b, (Kind::Int64, device)).unsqueeze(1) * s + &offset;
                    let xg = x.index_select(0, &image_row.flatten(0, -1));
                    let tg = fine_rows.index_select(0, &template.flatten(0, -1));
                    let logp = (xg * tg)
                        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                        .view([b, m * width])
                        .masked_fill(&valid.logical_not(), f64::NEG_INFINITY);
                    (logp, template, offset)
                }
                _ => {
                    let all = Tensor::arange(s * kr, (Kind::Int64, device)).unsqueeze(0);
                    (
                        coarse,
                        all.remainder(kr).expand([b, s * kr], false),
                        all.divide_scalar_mode(kr, "floor")
                            .expand([b, s * kr], false),
                    )
                }
            };
            let lse = logp.logsumexp([1i64].as_slice(), true); // [B][1]
            let constant = sub
                .yy
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                * 0.5;
            let ll = lse.squeeze_dim(1) - constant;
            let c = logp.size()[1];
            let (top_logp, top_pos) = logp.topk(SIGNIFICANT.min(c), 1, true, true); // [B][top]
            let template = cand_template.gather(1, &top_pos, false);
            let offset = cand_offset.gather(1, &top_pos, false);
            let top = top_pos.size()[1];
            let posterior = (&logp - &lse).exp();
            let cls = if local.is_some() {
                Tensor::zeros([b, k], (Kind::Float, device)).scatter_add(
                    1,
                    &cand_template.divide_scalar_mode(r_out, "floor"),
                    &posterior,
                )
            } else {
                posterior.view([b, s, k, r]).sum_dim_intlist(
                    [1i64, 3].as_slice(),
                    false,
                    Kind::Float,
                )
            };
            // The significant posteriors, renormalised.
            let w = (&top_logp - top_logp.logsumexp([1i64].as_slice(), true)).exp();
            let a_rep = sub.a.unsqueeze(1).expand([b, top, f], false);
            let ramp = ramps_conj
                .index_select(0, &offset.flatten(0, -1))
                .view([b, top, f]);
            let contrib = (a_rep * ramp) * w.unsqueeze(2);
            let qcontrib = sub.q.unsqueeze(1) * w.unsqueeze(2);
            let flat_t = (&template + i64::from(h) * kr).flatten(0, -1);
            let _ = num.index_add_(0, &flat_t, &contrib.view([b * top, f]));
            let _ = den.index_add_(0, &flat_t, &qcontrib.view([b * top, f]));

            let ll: Vec<f64> = Vec::try_from(&ll.to_kind(Kind::Double)).unwrap_or_default();
            let p_max = (top_logp.select(1, 0) - lse.squeeze_dim(1)).exp();
            let p_max: Vec<f64> = Vec::try_from(&p_max.to_kind(Kind::Double)).unwrap_or_default();
            let arg_t: Vec<i64> = Vec::try_from(&template.select(1, 0)).unwrap_or_default();
            let arg_o: Vec<i64> = Vec::try_from(&offset.select(1, 0)).unwrap_or_default();
            let cls: Vec<f64> =
                Vec::try_from(&cls.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default();
            for (j, &i) in chunk.iter().enumerate() {
                log_likelihood[i] = ll[j];
                max_posterior[i] = p_max[j];
                let t = arg_t[j] as usize;
                best[i] = [arg_o[j] as usize, t / r_out as usize, t % r_out as usize];
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

/// Where the M-step's Wiener term `1/τ²` (τ² the signal's power per shell) comes from.
#[derive(Debug, Clone, Copy)]
pub enum Prior<'a> {
    /// τ² = fudge × the per-shell power of these maps' spectra (`[K][N]³`, one per class).
    /// Only for a map that has power at every shell the M-step fills: a map cut at a lower
    /// frequency limit would keep the new shells at zero for ever.
    Spectrum(&'a Tensor, f64),
    /// τ² from the data, as RELION's gold-standard refinement: the FSC between the class's
    /// two half sets (each the plain quotient of its sums) gives the full set's signal to
    /// noise ratio per shell, `SSNR = 2·FSC/(1 − FSC)`, and τ² = fudge × SSNR / the shell's
    /// mean data weight. Shells whose FSC is not positive get no signal.
    HalfSets(f64),
}

/// The reconstruction of the M-step: `num` and `den` from [`expectation`] (templates of `K`
/// classes at `grid`'s rotations and frequencies `freqs`) back-projected, Hermitian-symmetrised
/// and divided with the Wiener term `1/τ²` of `prior`; nothing beyond `2·r_max` on the `2N`
/// grid.
pub fn maximisation(
    model: &ForwardModel,
    grid: &RotationGrid,
    freqs: &Tensor,
    exp: &Expectation,
    prior: Prior<'_>,
    r_max: f64,
) -> Maps {
    let r = grid.len() as i64;
    let k = exp.den.size()[1] / r;
    let n = model.box_size() as i64;
    let m = 2 * n;
    let device = exp.den.device();
    // The back-projection is the adjoint of the sampling, over the rotations that some image
    // weighs in some class (the others add nothing). All classes go in one batch: libtorch's
    // 3D sampler runs its batch's volumes in parallel, not the points of one volume.
    let used = exp
        .den
        .abs()
        .sum_dim_intlist([0i64, 2].as_slice(), false, Kind::Float)
        .view([k, r])
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
        .gt(0.0)
        .nonzero()
        .squeeze_dim(1);
    let u = used.size()[0];
    tracing::trace!(rotations = r, weighed = u, "the M-step's rotations");
    let leaf =
        Tensor::zeros([k, 6, m + 1, m + 1, m + 1], (Kind::Float, device)).set_requires_grad(true);
    if u > 0 {
        let rotations = grid.tensor.index_select(0, &used).repeat([k, 1, 1]);
        let sampled = model.sample_points(&leaf, &rotations, u, &(freqs * 2.0)); // [K][6][U][F]
        let f = freqs.size()[0];
        let mut channels = Vec::with_capacity(6);
        for h in 0..2 {
            let num = exp.num.get(h).view([k, r, f]).index_select(1, &used);
            channels.push(num.real());
            channels.push(num.imag());
            channels.push(exp.den.get(h).view([k, r, f]).index_select(1, &used));
        }
        let weights = Tensor::stack(&channels, 1);
        (sampled * weights).sum(Kind::Float).backward();
    }
    let mut g = if u > 0 {
        leaf.grad()
    } else {
        tch::no_grad(|| leaf.zeros_like())
    };
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
    let tau2 = match prior {
        Prior::Spectrum(maps, fudge) => {
            shell_means(&model.centred_spectra(maps).abs().square(), &shells) * fudge
        }
        Prior::HalfSets(fudge) => half_set_tau2(&nums, &dens, &shells) * fudge,
    }; // [K][shells]
    let reg = tau2
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

/// The mean of `values` (`[K][m]³`, real) over each shell of `shells`, `[K][shells]`.
fn shell_means(values: &Tensor, shells: &Tensor) -> Tensor {
    let count = shells.flatten(0, -1).bincount(None::<&Tensor>, 0);
    let n = count.size()[0];
    shell_sums(values, shells, n) / count.to_kind(Kind::Float).clamp_min(1.0)
}

/// The sum of `values` (`[K][m]³`, real) over each of the first `n` shells of `shells`,
/// `[K][n]`.
fn shell_sums(values: &Tensor, shells: &Tensor, n: i64) -> Tensor {
    let k = values.size()[0];
    let flat = shells.flatten(0, -1);
    let values = values.to_kind(Kind::Float).reshape([k, -1]);
    let rows: Vec<Tensor> = (0..k)
        .map(|i| flat.bincount(Some(&values.get(i)), n).to_kind(Kind::Float))
        .collect();
    Tensor::stack(&rows, 0)
}

/// τ² per class and shell (`[K][shells]`) from the half sets' sums (`nums`, `dens`: per half,
/// `[K][m]³`): the FSC of the two plain quotients `num/den`, the full set's SSNR
/// `2·FSC/(1 − FSC)` (FSC clamped to `[0, 0.999]`), divided by the shell's mean weight of both
/// halves together.
fn half_set_tau2(nums: &[Tensor], dens: &[Tensor], shells: &Tensor) -> Tensor {
    let quotient = |h: usize| {
        // A floor far below the data's weights, so that voxels no image reaches stay 0.
        let floor = dens[h].mean(Kind::Float).double_value(&[]).max(1e-30) * 1e-6;
        &nums[h] / (&dens[h] + floor)
    };
    let (a, b) = (quotient(0), quotient(1));
    let count = shells.flatten(0, -1).bincount(None::<&Tensor>, 0);
    let n = count.size()[0];
    let cross = shell_sums(&(&a * b.conj()).real(), shells, n);
    let p1 = shell_sums(&a.abs().square(), shells, n);
    let p2 = shell_sums(&b.abs().square(), shells, n);
    let fsc = (cross / (p1 * p2).sqrt().clamp_min(1e-30)).clamp(0.0, 0.999);
    let ssnr = &fsc * 2.0 / (fsc.neg() + 1.0);
    let weight =
        shell_sums(&(&dens[0] + &dens[1]), shells, n) / count.to_kind(Kind::Float).clamp_min(1.0);
    ssnr / weight.clamp_min(1e-30)
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

/// The volumes `[K][N][N][N]` moved by `t` voxels (`[x, y, z]`, content going to `r + t`), by
/// the Fourier phase ramp `exp(−2πi k·t/N)`: exact for a band-limited map, periodic in the box.
pub fn translate(volumes: &Tensor, t: [f64; 3]) -> Tensor {
    let n = volumes.size()[1];
    let device = volumes.device();
    let k = Tensor::fft_fftfreq(n, 1.0, (Kind::Double, device));
    let phase = (k.view([n, 1, 1]) * t[2] + k.view([1, n, 1]) * t[1] + k.view([1, 1, n]) * t[0])
        * (-2.0 * std::f64::consts::PI);
    let ramp = Tensor::polar(&phase.ones_like(), &phase).to_kind(Kind::ComplexFloat);
    let dims = [-3i64, -2, -1];
    (volumes.fft_fftn(None::<&[i64]>, &dims[..], "backward") * ramp)
        .fft_ifftn(None::<&[i64]>, &dims[..], "backward")
        .real()
}

/// The rotations an E-step scores: a grid, searched exhaustively, or through a grid twice as
/// coarse whose best candidates are refined on it ([`Local`]).
#[derive(Debug)]
pub struct Search {
    /// The grid whose rotations the result's indices name.
    pub grid: RotationGrid,
    /// The coarse grid and its partition of `grid`, for a local search.
    pub coarse: Option<(RotationGrid, Refinement)>,
    /// How many coarse candidates each image refines.
    pub top: i64,
}

impl Search {
    /// The grid of `step_deg`, searched through a grid of twice the step when `top > 0` and
    /// the step is at most `local_below_deg`, else exhaustively.
    pub fn new(step_deg: f64, top: usize, local_below_deg: f64, device: Device) -> Self {
        let grid = RotationGrid::new(step_deg, device);
        let coarse = (top > 0 && step_deg <= local_below_deg).then(|| {
            let coarse = RotationGrid::new(2.0 * step_deg, device);
            let refinement = Refinement::new(&coarse, &grid);
            (coarse, refinement)
        });
        Self {
            grid,
            coarse,
            top: top as i64,
        }
    }

    /// The templates of `volumes` that this search scores: its grid's, and its coarse
    /// grid's when it has one.
    pub fn templates(
        &self,
        model: &ForwardModel,
        volumes: &Tensor,
        freqs: &Tensor,
    ) -> SearchTemplates {
        SearchTemplates {
            fine: templates(model, volumes, &self.grid, freqs),
            coarse: self
                .coarse
                .as_ref()
                .map(|(coarse, _)| templates(model, volumes, coarse, freqs)),
        }
    }

    /// The E-step of templates from [`Search::templates`] (see [`expectation`]).
    #[allow(clippy::too_many_arguments)]
    pub fn expectation(
        &self,
        t: &SearchTemplates,
        terms: &ImageTerms,
        half: &[u8],
        log_pi: &[f64],
        ramps: &Tensor,
        batch_bytes: f64,
        cancelled: &dyn Fn() -> bool,
    ) -> Expectation {
        let local = match (&self.coarse, &t.coarse) {
            (Some((_, refinement)), Some(_)) => Some(Local {
                fine: &t.fine,
                refinement,
                top: self.top,
            }),
            _ => None,
        };
        expectation(
            terms,
            half,
            t.coarse.as_ref().unwrap_or(&t.fine),
            log_pi,
            ramps,
            batch_bytes,
            local.as_ref(),
            cancelled,
        )
    }
}

/// The templates a [`Search`] scores (from [`Search::templates`]).
#[derive(Debug)]
pub struct SearchTemplates {
    /// At every rotation of the search's grid, `[K·R][F]`.
    pub fine: Tensor,
    /// At every rotation of its coarse grid, when it searches locally.
    pub coarse: Option<Tensor>,
}

impl SearchTemplates {
    /// The templates of the volumes scaled by `c` (templates are linear in the volume).
    pub fn scaled(&self, c: f64) -> Self {
        Self {
            fine: &self.fine * c,
            coarse: self.coarse.as_ref().map(|t| t * c),
        }
    }
}
