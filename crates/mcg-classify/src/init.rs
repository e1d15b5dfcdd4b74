//! Where the K classes start: all from one reference, split along the heterogeneity.
//!
//! **`Pca`** (the default): the images are aligned to the reference (one E-step with K = 1),
//! the leading principal component `u` of their residuals at those poses is found by
//! alternating least squares — `c_i = ⟨e_i, P_i u⟩ / ‖P_i u‖²_q`, then `u` the Wiener
//! back-projection of `c_i·e_i` over `c_i²·q_i`, a few rounds of power iteration through
//! back-projection, as 3D variability analysis does — and the images' scores `c_i` are
//! clustered into K groups (k-means in one dimension). Each class is reconstructed from its
//! group at the images' poses, and π starts at the groups' shares.
//!
//! **`Random`**: each image is put in a class at random and the classes are reconstructed
//! from those groups, as RELION does: the classes then differ only by noise.

use mcg_forward::forward::ForwardModel;
use mcg_physics::rng::{Purpose, stream};
use rand::Rng;
use rand_distr::StandardNormal;
use tch::{Kind, Tensor};

use crate::em::{Expectation, Maps, Prior, RotationGrid, maximisation};
use crate::images::ImageTerms;

/// How the classes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Split along the residuals' leading principal component.
    Pca,
    /// Random groups of images.
    Random,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pca" => Ok(Self::Pca),
            "random" => Ok(Self::Random),
            other => Err(format!("unknown start {other:?}: expected pca or random")),
        }
    }
}

/// The images' best poses under one map: `(offset, rotation)` per image, from
/// [`crate::em::expectation`]'s `best`.
pub type Poses = Vec<[usize; 2]>;

/// The sums of [`maximisation`] for hard assignments: image `i` counted once, in half
/// `half[i]`, at template `class[i]·R + rotation` with offset `offset`, each image weighted
/// by `scale[i]` (its terms `a` by `scale`, `q` by `scale²`).
pub fn hard_sums(
    terms: &ImageTerms,
    half: &[u8],
    poses: &Poses,
    class: &[usize],
    rotations: usize,
    classes: usize,
    ramps: &Tensor,
    f: i64,
    scale: Option<&[f64]>,
) -> Expectation {
    let device = terms.q.device();
    let kr = (classes * rotations) as i64;
    let count = terms.len();
    let rows = Tensor::arange(count as i64, (Kind::Int64, device));
    let sub = terms.select(&rows, f);
    let offsets: Vec<i64> = poses.iter().map(|p| p[0] as i64).collect();
    let offsets = Tensor::from_slice(&offsets).to_device(device);
    let ramp = ramps.narrow(1, 0, f).index_select(0, &offsets).conj();
    let mut a = sub.a * ramp;
    let mut q = sub.q;
    if let Some(c) = scale {
        let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        let c = Tensor::from_slice(&c32)
            .to_device(device)
            .view([count as i64, 1]);
        a *= &c;
        q *= c.square();
    }
    let num = Tensor::zeros([2, kr, f], (Kind::ComplexFloat, device));
    let den = Tensor::zeros([2, kr, f], (Kind::Float, device));
    for h in 0..2u8 {
        let idx: Vec<i64> = (0..count)
            .filter(|&i| half[i] == h)
            .map(|i| i as i64)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let target: Vec<i64> = idx
            .iter()
            .map(|&i| (class[i as usize] * rotations + poses[i as usize][1]) as i64)
            .collect();
        let idx = Tensor::from_slice(&idx).to_device(device);
        let target = Tensor::from_slice(&target).to_device(device);
        let _ = num
            .get(i64::from(h))
            .index_add_(0, &target, &a.index_select(0, &idx));
        let _ = den
            .get(i64::from(h))
            .index_add_(0, &target, &q.index_select(0, &idx));
    }
    Expectation {
        num,
        den,
        log_likelihood: Vec::new(),
        class_posterior: Vec::new(),
        best: Vec::new(),
        max_posterior: Vec::new(),
    }
}

/// The leading principal component of the images' residuals from `reference` (`[1][N]³`) at
/// their poses, by `rounds` of alternating least squares, and each image's score on it.
/// Returns the component (`[1][N]³`, unit norm) and the scores.
pub fn principal_component(
    model: &ForwardModel,
    grid: &RotationGrid,
    freqs: &Tensor,
    terms: &ImageTerms,
    half: &[u8],
    poses: &Poses,
    ramps: &Tensor,
    reference: &Tensor,
    r_max: f64,
    rounds: usize,
    seed: u64,
) -> (Tensor, Vec<f64>) {
    let device = reference.device();
    let f = freqs.size()[0];
    let count = terms.len();
    let rows = Tensor::arange(count as i64, (Kind::Int64, device));
    let sub = terms.select(&rows, f);
    let rot_idx: Vec<i64> = poses.iter().map(|p| p[1] as i64).collect();
    let rot_idx = Tensor::from_slice(&rot_idx).to_device(device);
    let rotations = grid.tensor.index_select(0, &rot_idx); // [I][3][3]
    let offsets: Vec<i64> = poses.iter().map(|p| p[0] as i64).collect();
    let offsets = Tensor::from_slice(&offsets).to_device(device);
    let ramp = ramps.narrow(1, 0, f).index_select(0, &offsets).conj();
    let slice_at_poses =
        |v: &Tensor| model.slice_points(&model.spectra(v), &rotations, count as i64, freqs);
    // e = λ·C·conj(r)·(Y − C·r·t): the whitened residual, CTF-weighted.
    let t = slice_at_poses(reference);
    let e = &sub.a * &ramp - &sub.q * &t;
    let single = RotationGrid::from_tensor(rotations.shallow_clone());
    let one_ramp = Tensor::ones([1, f], (Kind::ComplexFloat, device));
    let as_terms = |c: &[f64]| {
        let c32: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        let c = Tensor::from_slice(&c32)
            .to_device(device)
            .view([count as i64, 1]);
        ImageTerms {
            a: &e * &c,
            q: &sub.q * c.square(),
            yy: sub.yy.shallow_clone(),
        }
    };
    // Each image at its own pose (rotation i of `single`), its offset already in `e`.
    let poses_each: Poses = (0..count).map(|i| [0, i]).collect();
    let mut rng = stream(seed, Purpose::Other(0xC1A5), 0);
    let mut scores: Vec<f64> = (0..count)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    let mut u = reference.zeros_like();
    for round in 0..=rounds {
        if round > 0 {
            let p = slice_at_poses(&u);
            let num = (e.conj() * &p)
                .real()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let den =
                (&sub.q * p.abs().square()).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let c = num / den.clamp_min(1e-30);
            scores = Vec::<f64>::try_from(&c.to_kind(Kind::Double)).unwrap_or_default();
            if round == rounds {
                break;
            }
        }
        let weighted = as_terms(&scores);
        let sums = hard_sums(
            &weighted,
            half,
            &poses_each,
            &vec![0; count],
            count,
            1,
            &one_ramp,
            f,
            None,
        );
        // The Wiener term from the component's own spectrum once it has one; the first round
        // borrows the reference's.
        let prior = if round == 0 { reference } else { &u };
        let Maps { full, .. } = maximisation(
            model,
            &single,
            freqs,
            &sums,
            Prior::Spectrum(prior, 1.0),
            r_max,
        );
        let norm = full.square().sum(Kind::Float).sqrt().clamp_min(1e-30);
        u = full / norm;
    }
    (u, scores)
}

/// K groups of one-dimensional `scores` by k-means (started at the quantiles
/// `(k + ½)/K`, 50 rounds): each score's group, groups ordered by their centre.
pub fn kmeans_1d(scores: &[f64], k: usize) -> Vec<usize> {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut centres: Vec<f64> = (0..k)
        .map(|j| sorted[(((j as f64 + 0.5) / k as f64) * n as f64) as usize % n.max(1)])
        .collect();
    let mut group = vec![0usize; scores.len()];
    for _ in 0..50 {
        for (g, &s) in group.iter_mut().zip(scores) {
            *g = (0..k)
                .min_by(|&a, &b| (s - centres[a]).abs().total_cmp(&(s - centres[b]).abs()))
                .unwrap_or(0);
        }
        let mut sum = vec![0.0; k];
        let mut cnt = vec![0usize; k];
        for (&g, &s) in group.iter().zip(scores) {
            sum[g] += s;
            cnt[g] += 1;
        }
        for j in 0..k {
            if cnt[j] > 0 {
                centres[j] = sum[j] / cnt[j] as f64;
            }
        }
    }
    group
}

/// Random groups: each image's class drawn uniformly from the stream `(seed, 0xC1A6)`.
pub fn random_groups(count: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = stream(seed, Purpose::Other(0xC1A6), 0);
    (0..count).map(|_| rng.random_range(0..k)).collect()
}
