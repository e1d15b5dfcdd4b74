//! Pose-free image statistics for the mixture's components: features of each image that do
//! not change with its in-plane rotation (and, for the power spectrum, its shift), and the
//! energy distance between the data's and the simulated images' feature distributions.
//!
//! A single consensus volume and a mixture of conformations give images whose *mean*
//! statistics agree closely (the second moments of a mixture are the mixture of its states'
//! moments), so a term that matches means cannot tell them apart at low SNR. The distribution
//! of a per-image invariant can: a compact and an open state give projections of different
//! extent at every orientation, so the data's feature cloud is wider and two-lobed where a
//! single volume's is not. The energy distance (Székely) compares whole distributions from
//! samples, is zero only when they agree, and its sample estimate is differentiable in the
//! simulated images (and in their importance weights, hence in the mixture's probabilities).
//!
//! Features (before standardisation by the data's mean and standard deviation):
//! - the log of the mean power in each Fourier ring 1 ..= N/3 (invariant to rotation and
//!   shift);
//! - the radial profile of the low-passed image about the box centre (pixel N/2), rings of
//!   width 1 px from 0 to 0.45 N (invariant to rotation about the centre; particles are
//!   centred up to their shifts).

use crate::TrainError;
use mcg_formats::ImageSource;
use tch::{Device, Kind, Tensor};

/// The invariant features of a data set's images and the matrices that compute them.
#[derive(Debug)]
pub struct InvariantFeatures {
    /// `[N·(N/2+1)][Rp]`: the mean over each Fourier ring of the `rfft2` half-plane.
    rings: Tensor,
    /// `[N·N][Rr]`: the mean over each real-space ring about the centre.
    radial: Tensor,
    /// `[N][N/2+1]`: the Gaussian low-pass applied before the radial profile.
    lowpass: Tensor,
    /// Mean `[F]` and standard deviation `[F]` of the data's raw features.
    mean: Tensor,
    std: Tensor,
    /// The data's standardised features `[n][F]`.
    pub data: Tensor,
    /// E|Y − Y'| over the data's features (from its first 2,000 rows), the term of the energy
    /// distance that the generator does not change: subtracted, the term is about 0 when the
    /// distributions agree.
    pub self_distance: f64,
}

/// Edge of the Fourier rings used: 1 ..= N/3.
fn power_rings(n: usize) -> usize {
    (n / 3).max(1)
}

/// Real-space rings 0 .. 0.45 N.
fn radial_rings(n: usize) -> usize {
    ((0.45 * n as f64).round() as usize).max(1)
}

/// A `[rows][bins]` matrix whose column `b` averages the rows whose bin is `b`.
fn averaging(bins_of_rows: &[Option<usize>], bins: usize) -> Tensor {
    let rows = bins_of_rows.len();
    let mut counts = vec![0usize; bins];
    for b in bins_of_rows.iter().flatten() {
        counts[*b] += 1;
    }
    let mut m = vec![0f32; rows * bins];
    for (r, b) in bins_of_rows.iter().enumerate() {
        if let Some(b) = b {
            m[r * bins + b] = 1.0 / counts[*b].max(1) as f32;
        }
    }
    Tensor::from_slice(&m).view([rows as i64, bins as i64])
}

impl InvariantFeatures {
    /// The matrices for `n`² images, with no data yet (identity standardisation).
    fn layout(n: usize) -> Self {
        let h = n / 2 + 1;
        let rp = power_rings(n);
        let rr = radial_rings(n);
        let signed = |row: usize| -> f64 {
            if row < n / 2 + n % 2 {
                row as f64
            } else {
                row as f64 - n as f64
            }
        };
        let mut ring_of = Vec::with_capacity(n * h);
        let mut low = Vec::with_capacity(n * h);
        let cutoff = 0.1875 * n as f64;
        for row in 0..n {
            for kx in 0..h {
                let k = (signed(row).powi(2) + (kx as f64).powi(2)).sqrt();
                let ring = k.round() as usize;
                ring_of.push((1..=rp).contains(&ring).then(|| ring - 1));
                low.push((-(k / cutoff).powi(2)).exp() as f32);
            }
        }
        let c = (n / 2) as f64;
        let mut radial_of = Vec::with_capacity(n * n);
        for y in 0..n {
            for x in 0..n {
                let r = ((y as f64 - c).powi(2) + (x as f64 - c).powi(2)).sqrt();
                let ring = r.round() as usize;
                radial_of.push((ring < rr).then_some(ring));
            }
        }
        let f = (rp + rr) as i64;
        Self {
            rings: averaging(&ring_of, rp),
            radial: averaging(&radial_of, rr),
            lowpass: Tensor::from_slice(&low).view([n as i64, h as i64]),
            mean: Tensor::zeros([f], (Kind::Float, Device::Cpu)),
            std: Tensor::ones([f], (Kind::Float, Device::Cpu)),
            data: Tensor::zeros([0, f], (Kind::Float, Device::Cpu)),
            self_distance: 0.0,
        }
    }

    /// Features of the data's first `count` images (all when fewer), read in chunks.
    pub fn from_source(source: &dyn ImageSource, count: usize) -> Result<Self, TrainError> {
        let n = source.box_size();
        let mut me = Self::layout(n);
        let count = count.min(source.len());
        if count < 2 {
            return Err(TrainError::Invalid(
                "invariant features need at least two images".into(),
            ));
        }
        let mut parts = Vec::new();
        crate::train::read_chunks(source, count, &mut |images| parts.push(me.raw(images)))?;
        let raw = Tensor::cat(&parts, 0);
        let mean = raw.mean_dim(&[0i64][..], false, Kind::Float);
        let std = raw.std_dim(&[0i64][..], true, false).clamp_min(1e-6);
        me.data = (&raw - &mean) / &std;
        let head = me.data.narrow(0, 0, (count as i64).min(2000));
        let rows = head.size()[0];
        me.self_distance = (distances(&head, &head).sum(Kind::Double).double_value(&[])
            - 1e-3 * rows as f64)
            / (rows * (rows - 1)) as f64;
        me.mean = mean;
        me.std = std;
        Ok(me)
    }

    /// Copies onto `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            rings: self.rings.to_device(device),
            radial: self.radial.to_device(device),
            lowpass: self.lowpass.to_device(device),
            mean: self.mean.to_device(device),
            std: self.std.to_device(device),
            data: self.data.to_device(device),
            self_distance: self.self_distance,
        }
    }

    /// Raw features `[B][F]` of images `[B][N][N]`.
    fn raw(&self, images: &Tensor) -> Tensor {
        let size = images.size();
        let (b, n) = (size[0], size[1]);
        let spec = images.fft_rfft2(None::<&[i64]>, [-2i64, -1], "ortho");
        let power = spec.abs().square().reshape([b, -1]);
        let rings = (power.matmul(&self.rings) + 1e-12).log();
        let low = (spec * &self.lowpass).fft_irfft2(Some([n, n].as_slice()), [-2i64, -1], "ortho");
        let radial = low.reshape([b, -1]).matmul(&self.radial);
        Tensor::cat(&[rings, radial], 1)
    }

    /// Standardised features `[B][F]` of images `[B][N][N]` (differentiable).
    pub fn features(&self, images: &Tensor) -> Tensor {
        (self.raw(images) - &self.mean) / &self.std
    }
}

/// Pairwise Euclidean distances `[A][B]` of rows, smoothed at 0 so that the gradient is
/// finite when two rows coincide.
fn distances(a: &Tensor, b: &Tensor) -> Tensor {
    let a2 = a.square().sum_dim_intlist(&[1i64][..], true, Kind::Float);
    let b2 = b.square().sum_dim_intlist(&[1i64][..], true, Kind::Float);
    (a2 + b2.transpose(0, 1) - a.matmul(&b.transpose(0, 1)) * 2.0)
        .clamp_min(0.0)
        .f_add_scalar(1e-6)
        .expect("finite")
        .sqrt()
}

/// The energy distance 2 E|X − Y| − E|X − X'| − E|Y − Y'| between samples `x` `[A][F]`
/// (importance weights `w` `[A]`, mean 1, or equal) and `y` `[B][F]`, without the term that
/// depends on `y` alone (constant for the generator). Pairs of a row with itself are left
/// out of E|X − X'|.
pub fn energy_distance(x: &Tensor, w: Option<&Tensor>, y: &Tensor) -> Tensor {
    let a = x.size()[0];
    let w = match w {
        Some(w) => w.shallow_clone(),
        None => Tensor::ones([a], (x.kind(), x.device())),
    };
    let xy = (distances(x, y) * w.unsqueeze(1)).mean(Kind::Float);
    let ww = w.unsqueeze(1) * w.unsqueeze(0);
    let off = Tensor::ones([a, a], (x.kind(), x.device())) - Tensor::eye(a, (x.kind(), x.device()));
    let xx = (distances(x, x) * ww * &off).sum(Kind::Float) / (a * (a - 1)) as f64;
    xy * 2.0 - xx
}

/// The mean distance `[K]` of each component's rows of `x` (`[A][F]`, `A / K` rows per
/// component, in order) to the rows of `y`, and the mean distance `[K][K]` between the rows of
/// each pair of components (a row's distance to itself left out).
pub fn component_distances(x: &Tensor, y: &Tensor, k: i64) -> (Tensor, Tensor) {
    let a = x.size()[0];
    let per = a / k;
    let to_data = distances(x, y)
        .mean_dim(&[1i64][..], false, Kind::Float)
        .view([k, per])
        .mean_dim(&[1i64][..], false, Kind::Float);
    let pairs = distances(x, x)
        * (Tensor::ones([a, a], (Kind::Float, x.device()))
            - Tensor::eye(a, (Kind::Float, x.device())));
    let sums = pairs
        .view([k, per, k, per])
        .sum_dim_intlist(&[1i64, 3][..], false, Kind::Float);
    let counts = Tensor::full([k, k], (per * per) as f64, (Kind::Float, x.device()))
        - Tensor::eye(k, (Kind::Float, x.device())) * per as f64;
    (to_data, sums / counts)
}

/// The minimum over the probability simplex of 2·πᵀd − πᵀEπ (see
/// [`crate::train::PiEstimator::Invariant`]), by exponentiated gradient from the uniform π,
/// kept at least 1 % per component; `None` while two components are too alike (see
/// [`MIN_COMPONENT_DISTANCE`]).
pub fn quadratic_simplex_minimum(d: &Tensor, e: &Tensor) -> Option<Tensor> {
    let k = d.size()[0] as usize;
    let dv: Vec<f64> = Vec::try_from(d.to_kind(Kind::Double).to_device(Device::Cpu)).expect("[K]");
    let ev: Vec<f64> =
        Vec::try_from(e.to_kind(Kind::Double).to_device(Device::Cpu).view([-1])).expect("[K][K]");
    let scale = dv.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    // The energy distance between two components' own distributions is 2Eₖₗ − Eₖₖ − Eₗₗ;
    // where it is not clearly positive the components are alike and nothing sets π.
    for i in 0..k {
        for j in i + 1..k {
            let apart = 2.0 * ev[i * k + j] - ev[i * k + i] - ev[j * k + j];
            if apart < MIN_COMPONENT_DISTANCE * scale {
                return None;
            }
        }
    }
    let mut pi = vec![1.0 / k as f64; k];
    for _ in 0..5000 {
        let grad: Vec<f64> = (0..k)
            .map(|i| 2.0 * (dv[i] - (0..k).map(|j| ev[i * k + j] * pi[j]).sum::<f64>()) / scale)
            .collect();
        let next: Vec<f64> = (0..k)
            .map(|i| (pi[i] * (-0.2 * grad[i]).exp()).max(1e-2))
            .collect();
        let total: f64 = next.iter().sum();
        pi = next.iter().map(|v| v / total).collect();
    }
    Some(
        Tensor::from_slice(&pi)
            .to_kind(Kind::Float)
            .to_device(d.device()),
    )
}

/// The smallest energy distance between two components' feature distributions, relative to
/// their mean distance to the data's, at which [`quadratic_simplex_minimum`] sets π (closed
/// and open Hsp90 at −10 dB: about 0.08).
pub const MIN_COMPONENT_DISTANCE: f64 = 0.01;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    /// `[n][2]` standard normal points about (shift, shift), from a seeded generator of its
    /// own (libtorch's global one is shared by the tests running in parallel).
    fn normal(rng: &mut rand::rngs::StdRng, n: i64, shift: f64) -> Tensor {
        let v: Vec<f32> = (0..2 * n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (z + shift) as f32
            })
            .collect();
        Tensor::from_slice(&v).view([n, 2])
    }

    fn disc(n: usize, radius: f64, offset: (f64, f64)) -> Vec<f32> {
        let c = (n / 2) as f64;
        let mut v = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                let r =
                    ((y as f64 - c - offset.0).powi(2) + (x as f64 - c - offset.1).powi(2)).sqrt();
                v[y * n + x] = (-(r / radius).powi(2)).exp() as f32;
            }
        }
        v
    }

    /// An elongated blob at angle `theta` about the centre.
    fn rod(n: usize, theta: f64) -> Vec<f32> {
        let c = (n / 2) as f64;
        let (s, co) = theta.sin_cos();
        let mut v = vec![0f32; n * n];
        for y in 0..n {
            for x in 0..n {
                let (dy, dx) = (y as f64 - c, x as f64 - c);
                let u = co * dx + s * dy;
                let t = -s * dx + co * dy;
                v[y * n + x] = (-(u / 5.0).powi(2) - (t / 2.0).powi(2)).exp() as f32;
            }
        }
        v
    }

    #[test]
    fn features_do_not_change_with_rotation_and_the_power_rings_not_with_shift() {
        let n = 32;
        let f = InvariantFeatures::layout(n);
        let images: Vec<f32> = [0.0, 0.9, 2.0].iter().flat_map(|&t| rod(n, t)).collect();
        let t = Tensor::from_slice(&images).view([3, n as i64, n as i64]);
        let raw = f.raw(&t);
        for i in 1..3 {
            let diff = (raw.get(i) - raw.get(0)).abs().max().double_value(&[]);
            let scale = raw.get(0).abs().max().double_value(&[]);
            // Pixel rings are only approximately rotation invariant.
            assert!(diff < 0.1 * scale, "rotation {i}: {diff} against {scale}");
        }
        let a = Tensor::from_slice(&disc(n, 3.0, (0.0, 0.0))).view([1, n as i64, n as i64]);
        let b = a.roll([3, -2], [1, 2]);
        let rp = power_rings(n) as i64;
        let (fa, fb) = (f.raw(&a), f.raw(&b));
        let ring_diff = (fa.narrow(1, 0, rp) - fb.narrow(1, 0, rp))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            ring_diff < 1e-4,
            "power rings moved by {ring_diff} on a shift"
        );
        // The radial profile does see the shift.
        let radial_diff = (fa.narrow(1, rp, 1) - fb.narrow(1, rp, 1))
            .abs()
            .double_value(&[0, 0]);
        assert!(radial_diff > 1e-3);
    }

    #[test]
    fn a_wider_particle_has_its_power_at_lower_rings_and_its_mass_further_out() {
        let n = 32;
        let f = InvariantFeatures::layout(n);
        let small = Tensor::from_slice(&disc(n, 2.0, (0.0, 0.0))).view([1, 32, 32]);
        let wide = Tensor::from_slice(&disc(n, 4.0, (0.0, 0.0))).view([1, 32, 32]) / 4.0;
        let (fs, fw) = (f.raw(&small), f.raw(&wide));
        let rp = power_rings(n) as i64;
        // Equal mass (the wide one is divided by 4 = (4/2)²): at ring 6 the small one has more
        // power; at the centre the small one is brighter and at radius 5 dimmer.
        assert!(fs.double_value(&[0, 5]) > fw.double_value(&[0, 5]) + 1.0);
        assert!(fs.double_value(&[0, rp]) > fw.double_value(&[0, rp]));
        assert!(fs.double_value(&[0, rp + 5]) < fw.double_value(&[0, rp + 5]));
    }

    #[test]
    fn the_energy_distance_is_least_for_the_same_distribution_and_sees_proportions() {
        let rng = &mut rand::rngs::StdRng::seed_from_u64(3);
        let a = 400;
        let y = Tensor::cat(&[normal(rng, 100, -2.0), normal(rng, 300, 2.0)], 0);
        let mut lobe = |shift: f64| normal(rng, a / 2, shift);
        // Equal numbers drawn from each lobe; importance weights give the proportions.
        let x = Tensor::cat(&[lobe(-2.0), lobe(2.0)], 0);
        let weights = |p: f64| {
            Tensor::cat(
                &[
                    Tensor::full([a / 2], 2.0 * p, (Kind::Float, Device::Cpu)),
                    Tensor::full([a / 2], 2.0 * (1.0 - p), (Kind::Float, Device::Cpu)),
                ],
                0,
            )
        };
        let at = |p: f64| energy_distance(&x, Some(&weights(p)), &y).double_value(&[]);
        let (right, even, wrong) = (at(0.25), at(0.5), at(0.75));
        assert!(right < even && even < wrong, "{right} {even} {wrong}");
        // One lobe alone is further than the right mixture.
        let single = normal(rng, a, 1.0);
        let one = energy_distance(&single, None, &y).double_value(&[]);
        assert!(right < one, "{right} against {one}");
        // The gradient reaches the weights.
        let p = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let w = Tensor::cat(
            &[
                (&p * 2.0).expand([a / 2], false),
                ((-&p + 1.0) * 2.0).expand([a / 2], false),
            ],
            0,
        );
        energy_distance(&x, Some(&w), &y).backward();
        // Lowering p (towards 0.25) lowers the distance: its gradient is positive.
        assert!(p.grad().double_value(&[0]) > 0.0);
    }

    #[test]
    fn the_proportions_minimising_the_distance_are_the_datas() {
        // Two lobes, the data holding them 25 / 75 and each component one lobe (equal numbers
        // of rows): the quadratic's minimum is π ≈ (0.25, 0.75); with the lobes swapped in the
        // data, (0.75, 0.25).
        let rng = &mut rand::rngs::StdRng::seed_from_u64(4);
        let mut lobe = |n: i64, shift: f64| normal(rng, n, shift);
        let x = Tensor::cat(&[lobe(300, -2.0), lobe(300, 2.0)], 0);
        for (closed, want) in [(250, 0.25), (750, 0.75)] {
            let y = Tensor::cat(&[lobe(closed, -2.0), lobe(1000 - closed, 2.0)], 0);
            let (d, e) = component_distances(&x, &y, 2);
            let pi: Vec<f32> = quadratic_simplex_minimum(&d, &e)
                .unwrap()
                .try_into()
                .unwrap();
            assert!((pi[0] as f64 - want).abs() < 0.04, "{pi:?} against {want}");
            assert!((pi[0] + pi[1] - 1.0).abs() < 1e-5);
        }
        // Identical components: nothing sets π.
        let same = Tensor::cat(&[lobe(300, 0.0), lobe(300, 0.0)], 0);
        let y = lobe(1000, 0.0);
        let (d, e) = component_distances(&same, &y, 2);
        assert!(quadratic_simplex_minimum(&d, &e).is_none());
    }
}
