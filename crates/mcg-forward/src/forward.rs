//! The differentiable forward model: volumes → projections → shift and CTF → noise, on libtorch.
//!
//! One truth (`ARCHITECTURE.md`): the parts that need no gradient come from the physics crate
//! itself. Poses are drawn and turned into RELION matrices by `mcg_physics::pose`; each
//! particle's shift phase ramp and CTF are evaluated on the 2×-padded grid by
//! `mcg_physics::shift::translate_spectrum` and `mcg_physics::ctf::CtfGrid` into one complex
//! filter per particle. Only the projection (which G's gradient flows through) is computed here,
//! by the same rule as `mcg_physics::project::project_real_space`: the line integral, in unit
//! steps, of the trilinearly interpolated volume along the pose's viewing direction, zero
//! outside the box. A test holds this model to the physics crate's simulator.
//!
//! Layouts: volumes are `[V][z][y][x]`, images `[B][y][x]`, the voxel/pixel `N/2` is the
//! origin. The filter multiplies the plain 2D DFT (`rfft2`) of the projection zero-padded to
//! `2N` (placed at `N/2 .. 3N/2`): the physics crate's centred spectra differ from the plain DFT
//! by the factor `(−1)^(kx+ky)` on both sides of a pointwise product, so the same filter applies.

use mcg_physics::ctf::CtfGrid;
use mcg_physics::fourier::half_width;
use mcg_physics::normalize::Normalization;
use mcg_physics::shift::translate_spectrum;
use mcg_physics::simulate::ImagingParams;
use tch::{Device, Kind, Tensor};

/// The physics of one batch of particles, prepared on the CPU by the physics crate and moved to
/// the device: rotation matrices and, when the CTF or shifts apply, the Fourier filters.
#[derive(Debug)]
pub struct BatchPhysics {
    /// RELION matrices `A`, `[B][3][3]`, float.
    pub rotations: Tensor,
    /// `CTF × shift ramp` on the plain `rfft2` layout of the `2N`-padded image,
    /// `[B][2N][N + 1]`, complex; `None` when neither applies.
    pub filters: Option<Tensor>,
}

impl BatchPhysics {
    /// Prepares `params` for images of `n`² pixels of `apix` Å; the CTF is applied when `ctf`.
    pub fn new(params: &[ImagingParams], n: usize, apix: f64, ctf: bool, device: Device) -> Self {
        let b = params.len();
        let mut rot = Vec::with_capacity(b * 9);
        for p in params {
            for row in p.pose.matrix() {
                rot.extend(row.iter().map(|&v| v as f32));
            }
        }
        let rotations = upload(Tensor::from_slice(&rot).view([b as i64, 3, 3]), device);
        let shifted = params.iter().any(|p| p.shift.x != 0.0 || p.shift.y != 0.0);
        let filters = (ctf || shifted).then(|| {
            let m = 2 * n;
            let len = m * half_width(m);
            let grid = CtfGrid::new(m, apix);
            let mut ctf_values = vec![0.0f32; len];
            let mut data = Vec::with_capacity(b * len * 2);
            for p in params {
                let mut h = vec![rustfft_one(); len];
                if p.shift.x != 0.0 || p.shift.y != 0.0 {
                    let [tx, ty] = p.shift.simulation_translation(apix);
                    translate_spectrum(&mut h, m, tx, ty);
                }
                if ctf {
                    grid.evaluate(&p.ctf, &mut ctf_values);
                    for (z, c) in h.iter_mut().zip(&ctf_values) {
                        *z *= *c;
                    }
                }
                for z in h {
                    data.push(z.re);
                    data.push(z.im);
                }
            }
            upload(
                Tensor::from_slice(&data).view([b as i64, m as i64, half_width(m) as i64, 2]),
                device,
            )
            .view_as_complex()
        });
        Self { rotations, filters }
    }
}

/// Moves a host tensor to `device`, asking for an asynchronous copy. (Pinning the host memory
/// first would let the copy overlap more, but libtorch 2.11 warns at every `pin_memory` call
/// that tch makes, since tch passes the deprecated device argument.)
pub fn upload(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => t,
        d => {
            let kind = t.kind();
            t.to_device_(d, kind, true, false)
        }
    }
}

fn rustfft_one() -> rustfft::num_complex::Complex32 {
    rustfft::num_complex::Complex32::new(1.0, 0.0)
}

/// Which projector the forward model uses: the physics crate's own choice, so that a name
/// means the same projector on both sides (both held to the physics crate by tests):
/// `Fourier`, central slices of each volume's 2×-oversampled 3D transform; `RealSpace`, line
/// integrals through the rotated volume.
pub use mcg_physics::simulate::ProjectorKind as Projector;

/// Projects volumes and forms images, differentiably (see the module notes).
#[derive(Debug)]
pub struct ForwardModel {
    n: i64,
    /// The sample offsets `(u, v, t)` of every (step, row, column), `[T·N·N][3]`, before rotation.
    offsets: Tensor,
    steps: i64,
    /// The 2D frequencies `(kx, ky, 0)` of the `2N` half-plane, `[2N·(N + 1)][3]`.
    frequencies: Tensor,
    /// 1 inside the Nyquist circle `kx² + ky² ≤ N²`, 0 outside, times `(−1)^(kx + ky)` (from
    /// centred to plain DFT), `[2N][N + 1]`.
    slice_weight: Tensor,
    /// The gridding correction `1 / Π sinc²(π u / 2N)`, `[N][N][N]`.
    correction: Tensor,
    /// `(−1)^(kx + ky + kz)` on the `2N` grid: centres the 3D transform on index `N`.
    centring: Tensor,
}

impl ForwardModel {
    /// The model for `n`³ volumes and `n`² images on `device`.
    pub fn new(n: usize, device: Device) -> Self {
        let n = n as i64;
        let c = (n / 2) as f64;
        // Every sample a ray through the box can see: |t| ≤ √3·(N/2 + 1).
        let half = (3f64.sqrt() * (c + 1.0)).ceil() as i64;
        let steps = 2 * half + 1;
        let opts = (Kind::Float, device);
        let t = Tensor::arange_start(-half, half + 1, opts);
        let yx = Tensor::arange(n, opts) - c;
        let tt = t.view([steps, 1, 1]).expand([steps, n, n], false);
        let vv = yx.view([1, n, 1]).expand([steps, n, n], false);
        let uu = yx.view([1, 1, n]).expand([steps, n, n], false);
        let offsets = Tensor::stack(&[uu, vv, tt], -1).view([steps * n * n, 3]);

        let m = 2 * n;
        let h = n + 1;
        let kx = Tensor::arange(h, opts);
        let ky_index = Tensor::arange(m, opts);
        let ky = (&ky_index + n).remainder(m as f64) - n as f64;
        let kxx = kx.view([1, h]).expand([m, h], false);
        let kyy = ky.view([m, 1]).expand([m, h], false);
        let frequencies = Tensor::stack(
            &[kxx.shallow_clone(), kyy.shallow_clone(), kxx.zeros_like()],
            -1,
        )
        .view([m * h, 3]);
        let inside = (kxx.square() + kyy.square())
            .le((n * n) as f64)
            .to_kind(Kind::Float);
        let parity = (kx.view([1, h]) + ky_index.view([m, 1])).remainder(2.0);
        let sign = parity * -2.0 + 1.0;
        let slice_weight = inside * sign;
        // sinc(π u / 2N) per axis; libtorch's sinc(x) is sin(πx)/(πx).
        let w = ((Tensor::arange(n, opts) - c) / m as f64).sinc().square();
        let correction = (w.view([n, 1, 1]) * w.view([1, n, 1]) * w.view([1, 1, n])).reciprocal();
        let idx = Tensor::arange(m, opts);
        let par = idx.view([m, 1, 1]) + idx.view([1, m, 1]) + idx.view([1, 1, m]);
        let centring = par.remainder(2.0) * -2.0 + 1.0;
        Self {
            n,
            offsets,
            steps,
            frequencies,
            slice_weight,
            correction,
            centring,
        }
    }

    /// Centred 3D spectra of `volumes` (`[V][N][N][N]`) for slicing: gridding-corrected, zero
    /// padded to `2N`, transformed with the origin at index `N`, shifted so that array index
    /// `N + k` holds frequency `k`, and extended by one periodic plane on each axis:
    /// `[V][2][2N + 1]³` (real and imaginary parts as channels).
    pub fn spectra(&self, volumes: &Tensor) -> Tensor {
        let n = self.n;
        let lo = n / 2;
        let corrected = volumes * &self.correction;
        let padded = corrected.constant_pad_nd([lo, n - lo, lo, n - lo, lo, n - lo]);
        let f = padded.fft_fftn(None::<&[i64]>, &[-3i64, -2, -1][..], "backward");
        // Origin at index N: the centred transform is the DFT times (−1)^(kx + ky + kz).
        let centred = (f * &self.centring).fft_fftshift(&[-3i64, -2, -1][..]);
        let mut parts = centred.view_as_real().permute([0, 4, 1, 2, 3]);
        for d in 2..5 {
            parts = Tensor::cat(&[parts.shallow_clone(), parts.narrow(d, 0, 1)], d);
        }
        parts
    }

    /// Plain-DFT half-plane spectra `[V·P][2N][N + 1]` (complex) of the `2N`-padded projections
    /// of each volume's `spectra` (from [`ForwardModel::spectra`]) at `P` poses each
    /// (`rotations`, `[V·P][3][3]`, volume after volume): trilinear central slices, zero beyond
    /// the Nyquist circle.
    pub fn slices(&self, spectra: &Tensor, rotations: &Tensor, poses_per_volume: i64) -> Tensor {
        let n = self.n;
        let (m, h) = (2 * n, n + 1);
        let b = rotations.size()[0];
        let sampled = self.sample_points(spectra, rotations, poses_per_volume, &self.frequencies);
        let parts = sampled.permute([0, 2, 3, 1]).reshape([b, m, h, 2]);
        parts.contiguous().view_as_complex() * &self.slice_weight
    }

    /// The one sampling rule of the Fourier projector: the trilinear samples of a centred,
    /// periodically extended grid `[V][C][2N + 1]³` (index `N` the origin, as from
    /// [`ForwardModel::spectra`]; `C` channels, e.g. real and imaginary parts) at the in-plane
    /// `frequencies` (`[F][3]`, `(kx, ky, 0)` in units of the `2N` grid) rotated by each pose
    /// (`rotations`, `[V·P][3][3]`, volume after volume): the 3D point of image frequency `k`
    /// under RELION matrix `A` is `Aᵀk`. Returns `[V][C][P][F]`. Its adjoint (autograd's
    /// gradient) is the trilinear back-projection.
    pub fn sample_points(
        &self,
        grid_values: &Tensor,
        rotations: &Tensor,
        poses_per_volume: i64,
        frequencies: &Tensor,
    ) -> Tensor {
        let n = self.n;
        let m = 2 * n;
        let v = grid_values.size()[0];
        let f = frequencies.size()[0];
        let points = frequencies.unsqueeze(0).matmul(rotations) + n as f64;
        let grid = (points * (2.0 / m as f64) - 1.0).view([v, poses_per_volume, f, 1, 3]);
        grid_values.grid_sampler(&grid, 0, 0, true).squeeze_dim(-1)
    }

    /// Centred 2D spectra (the physics crate's layout, origin at pixel `N/2`) of the projections
    /// of each volume's [`ForwardModel::spectra`] at `P` poses each, at the `N`-grid image
    /// frequencies `frequencies` (`[F][3]`, `(kx, ky, 0)` in units of the `N` grid):
    /// `[V·P][F]` complex. No CTF or shift: the classification applies them on its side.
    pub fn slice_points(
        &self,
        spectra: &Tensor,
        rotations: &Tensor,
        poses_per_volume: i64,
        frequencies: &Tensor,
    ) -> Tensor {
        let b = rotations.size()[0];
        let f = frequencies.size()[0];
        // An N-grid frequency k is the padded grid's 2k.
        let doubled = frequencies * 2.0;
        let sampled = self.sample_points(spectra, rotations, poses_per_volume, &doubled);
        sampled
            .permute([0, 2, 3, 1])
            .reshape([b, f, 2])
            .contiguous()
            .view_as_complex()
    }

    /// The volumes `[V][N][N][N]` whose [`ForwardModel::spectra`] is the centred `2N`-grid
    /// spectrum `centred` (`[V][2N][2N][2N]` complex, index `N` the origin): its inverse
    /// transform, cropped to the central `N³` and divided by the gridding correction. The
    /// inverse of `spectra` (`volumes_from_centred(spectra(v)) = v`, without the periodic planes).
    pub fn volumes_from_centred(&self, centred: &Tensor) -> Tensor {
        self.cropped_inverse(centred) / &self.correction
    }

    /// The inverse transform of a centred `2N`-grid spectrum, cropped to the central `N³`.
    fn cropped_inverse(&self, centred: &Tensor) -> Tensor {
        let n = self.n;
        let lo = n / 2;
        let dims = [-3i64, -2, -1];
        let plain = centred.fft_ifftshift(&dims[..]) * &self.centring;
        let padded = plain
            .fft_ifftn(None::<&[i64]>, &dims[..], "backward")
            .real();
        padded.narrow(1, lo, n).narrow(2, lo, n).narrow(3, lo, n)
    }

    /// The volumes `[V][N][N][N]` of a spectrum gridded by trilinear back-projection
    /// (`centred`, `[V][2N][2N][2N]` complex, index `N` the origin, each voxel the
    /// trilinear-weighted mean of the slice values around it): such a grid holds the
    /// continuous spectrum convolved with the trilinear kernel, i.e. the map times
    /// `Π sinc²(π u / 2N)`, which is divided out here (the gridding correction of a
    /// reconstruction, where [`ForwardModel::volumes_from_centred`] inverts a projector's grid).
    pub fn volumes_from_gridded(&self, centred: &Tensor) -> Tensor {
        self.cropped_inverse(centred) * &self.correction
    }

    /// [`ForwardModel::spectra`] as a complex `[V][2N][2N][2N]` grid (the periodic planes
    /// dropped): the form [`ForwardModel::volumes_from_centred`] inverts.
    pub fn centred_spectra(&self, volumes: &Tensor) -> Tensor {
        let m = 2 * self.n;
        self.spectra(volumes)
            .narrow(2, 0, m)
            .narrow(3, 0, m)
            .narrow(4, 0, m)
            .permute([0, 2, 3, 4, 1])
            .contiguous()
            .view_as_complex()
    }

    /// Clean images through the Fourier projector: `volumes` `[V][N][N][N]`, each seen at
    /// `poses_per_volume` poses (`physics` holds `V·P` particles, volume after volume).
    pub fn clean_fourier(
        &self,
        volumes: &Tensor,
        physics: &BatchPhysics,
        poses_per_volume: i64,
    ) -> Tensor {
        self.clean_from_spectra(&self.spectra(volumes), physics, poses_per_volume)
    }

    /// [`ForwardModel::clean_fourier`] from the volumes' [`ForwardModel::spectra`], so that
    /// several batches of images of the same volumes share their 3D transforms.
    pub fn clean_from_spectra(
        &self,
        spectra: &Tensor,
        physics: &BatchPhysics,
        poses_per_volume: i64,
    ) -> Tensor {
        let n = self.n;
        let lo = n / 2;
        let spec = self.slices(spectra, &physics.rotations, poses_per_volume);
        let spec = match &physics.filters {
            Some(f) => spec * f,
            None => spec,
        };
        let back = spec.fft_irfft2(Some(&[2 * n, 2 * n][..]), [-2i64, -1], "backward");
        back.narrow(1, lo, n).narrow(2, lo, n)
    }

    /// Box edge `N`.
    pub fn box_size(&self) -> usize {
        self.n as usize
    }

    /// Projections `[B][N][N]` of `volumes` (`[B][N][N][N]`, one per image) at the poses of
    /// `rotations` (`[B][3][3]`): Σ_t V(Aᵀ(u, v, t) + c), trilinear, zero outside.
    pub fn project(&self, volumes: &Tensor, rotations: &Tensor) -> Tensor {
        let n = self.n;
        let b = rotations.size()[0];
        let c = (n / 2) as f64;
        // Sample point p = (u, v, t)·A + c, in (x, y, z) voxel indices.
        let points = self.offsets.unsqueeze(0).matmul(rotations) + c;
        // grid_sample with align_corners: −1 is index 0 and +1 is index N − 1.
        let grid = (points * (2.0 / (n - 1) as f64) - 1.0).view([b, self.steps, n, n, 3]);
        let samples = volumes.unsqueeze(1).grid_sampler(&grid, 0, 0, true);
        samples.sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
    }

    /// Applies per-image Fourier filters (`[B][2N][N + 1]`, complex) to images `[B][N][N]` on the
    /// `2N`-padded grid, returning the central `N × N`.
    pub fn filter(&self, images: &Tensor, filters: &Tensor) -> Tensor {
        let n = self.n;
        let lo = n / 2;
        let padded = images.constant_pad_nd([lo, lo, lo, lo]);
        let spectrum = padded.fft_rfft2(None::<&[i64]>, [-2i64, -1], "backward");
        let filtered = spectrum * filters;
        let back = filtered.fft_irfft2(Some(&[2 * n, 2 * n][..]), [-2i64, -1], "backward");
        back.narrow(1, lo, n).narrow(2, lo, n)
    }

    /// Clean images of `volumes` (one per image) under `physics`.
    pub fn clean(&self, volumes: &Tensor, physics: &BatchPhysics) -> Tensor {
        let projections = self.project(volumes, &physics.rotations);
        match &physics.filters {
            Some(f) => self.filter(&projections, f),
            None => projections,
        }
    }

    /// Adds white Gaussian noise of standard deviation `sigma` (libtorch's generator).
    pub fn add_noise(images: &Tensor, sigma: f64) -> Tensor {
        if sigma > 0.0 {
            images + images.randn_like() * sigma
        } else {
            images.shallow_clone()
        }
    }

    /// Adds coloured Gaussian noise (libtorch's generator) of amplitude filter `filter`
    /// (`[N][N/2 + 1]`, √P of [`mcg_physics::noise::NoiseSpectrum::amplitude_filter`]): white
    /// noise, transformed, filtered and transformed back (`norm = "backward"` both ways, as
    /// the filter's definition requires), so its pixel variance is the spectrum's.
    pub fn add_coloured_noise(images: &Tensor, filter: &Tensor) -> Tensor {
        let n = images.size()[images.dim() - 1];
        let white = images.randn_like();
        let spectrum = white.fft_rfft2(None::<&[i64]>, [-2i64, -1], "backward") * filter;
        images + spectrum.fft_irfft2(Some(&[n, n][..]), [-2i64, -1], "backward")
    }

    /// Images `[B][N][N]` normalised one by one as [`mcg_physics::normalize::normalize`]
    /// does on the CPU (the same pixels, population standard deviation, a constant region only
    /// centred), differentiably: the simulated images' twin of the data's normalisation.
    pub fn normalize(images: &Tensor, how: &Normalization) -> Tensor {
        let n = images.size()[images.dim() - 1] as usize;
        let mask = match how {
            Normalization::None => return images.shallow_clone(),
            Normalization::Whole => None,
            Normalization::Background { .. } => {
                let r = how.background_radius(n).unwrap_or(0.0);
                let c = (n / 2) as f64;
                let m: Vec<f32> = (0..n * n)
                    .map(|i| {
                        let (y, x) = ((i / n) as f64 - c, (i % n) as f64 - c);
                        f32::from(u8::from(x * x + y * y > r * r))
                    })
                    .collect();
                Some(
                    Tensor::from_slice(&m)
                        .view([1, n as i64, n as i64])
                        .to_device(images.device()),
                )
            }
        };
        let (mean, var) = match &mask {
            None => {
                let mean = images.mean_dim(&[-2i64, -1][..], true, Kind::Float);
                let var = (images - &mean)
                    .square()
                    .mean_dim(&[-2i64, -1][..], true, Kind::Float);
                (mean, var)
            }
            Some(m) => {
                let count = m.sum(Kind::Float);
                let mean =
                    (images * m).sum_dim_intlist(&[-2i64, -1][..], true, Kind::Float) / &count;
                let var = ((images - &mean).square() * m).sum_dim_intlist(
                    &[-2i64, -1][..],
                    true,
                    Kind::Float,
                ) / &count;
                (mean, var)
            }
        };
        let std = var.sqrt();
        // A constant region (σ 0) is only centred, as on the CPU.
        let scale = std.where_self(&std.gt(0.0), &std.ones_like());
        (images - mean) / scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcg_physics::rng::{Purpose, stream};
    use mcg_physics::simulate::{ProjectorKind, RandomImaging, Simulator};
    use mcg_physics::{Shift, Volume};
    use ndarray::Array3;
    use rand::Rng;

    #[test]
    fn coloured_noise_has_the_spectrum_it_is_given() {
        let n = 16usize;
        let spectrum = mcg_physics::noise::NoiseSpectrum::realistic(n, 2.5);
        let filter =
            Tensor::from_slice(&spectrum.amplitude_filter()).view([n as i64, (n / 2 + 1) as i64]);
        tch::manual_seed(4);
        let zeros = Tensor::zeros([4000, n as i64, n as i64], (Kind::Float, Device::Cpu));
        let noise = ForwardModel::add_coloured_noise(&zeros, &filter);
        let values: Vec<f32> = noise.flatten(0, -1).try_into().unwrap();
        let images = Array3::from_shape_vec((4000, n, n), values).unwrap();
        let variance =
            images.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / images.len() as f64;
        assert!(
            (variance / 2.5 - 1.0).abs() < 0.02,
            "pixel variance {variance}, expected 2.5"
        );
        // The physics crate's estimator (whole images) finds the spectrum shell by shell.
        let found =
            mcg_physics::noise::NoiseSpectrum::estimate_background(images.view(), 0.0).unwrap();
        // The model averaged over the estimator's shells (radius rounded to the nearest
        // integer), on the full grid of signed frequencies.
        let h = (n / 2) as i64;
        let mut sums = vec![(0.0, 0usize); n];
        for ky in -h..h {
            for kx in -h..h {
                let r = ((kx * kx + ky * ky) as f64).sqrt();
                let e = &mut sums[r.round() as usize];
                e.0 += spectrum.power_at(r);
                e.1 += 1;
            }
        }
        for (shell, &(sum, count)) in sums.iter().enumerate().take(n / 2 + 1).skip(1) {
            let (got, want) = (found.power()[shell], sum / count as f64);
            assert!(
                (got / want - 1.0).abs() < 0.05,
                "shell {shell}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn normalisation_matches_the_cpu_normalisation() {
        let n = 16usize;
        let mut rng = stream(3, Purpose::Other(0), 0);
        let mut images =
            Array3::<f32>::from_shape_fn((3, n, n), |_| rng.random::<f32>() * 4.0 + 2.0);
        // A constant image: only centred, on both sides.
        images.index_axis_mut(ndarray::Axis(0), 2).fill(5.0);
        let tensor = Tensor::from_slice(images.as_slice().unwrap()).view([3, n as i64, n as i64]);
        for how in [
            Normalization::None,
            Normalization::Whole,
            Normalization::Background { radius_px: None },
            Normalization::Background {
                radius_px: Some(5.0),
            },
        ] {
            let got: Vec<f32> = ForwardModel::normalize(&tensor, &how)
                .flatten(0, -1)
                .try_into()
                .unwrap();
            let mut want = images.clone();
            for image in want.axis_iter_mut(ndarray::Axis(0)) {
                mcg_physics::normalize::normalize(image, &how);
            }
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{how}: max difference {err}");
        }
    }

    /// Band-limited blobs inside the sphere of radius N/2.
    fn blobs(n: usize) -> Volume {
        let spots = [
            ([0.0, 0.0, 0.0], 1.0, 2.5),
            ([5.0, 1.0, -2.0], 0.8, 2.0),
            ([-3.0, 4.0, 2.0], 0.6, 1.8),
            ([-1.0, -5.0, 3.0], 0.9, 1.6),
        ]
        .map(|(centre, amplitude, sigma)| mcg_physics::Blob {
            centre,
            amplitude,
            sigma,
        });
        Volume::gaussian_blobs(n, 5.0, &spots).unwrap()
    }

    fn to_tensor(v: &Volume) -> Tensor {
        let n = v.box_size() as i64;
        Tensor::from_slice(v.data().as_slice().unwrap()).view([n, n, n])
    }

    /// `volumes_from_centred` inverts `centred_spectra`, and `slice_points` at an `N`-grid
    /// frequency `k` is the padded slice of `slices` at `2k` (where the centred-to-plain sign
    /// is 1): one sampling rule for both.
    #[test]
    fn point_slices_agree_with_slices_and_spectra_invert() {
        let n = 16;
        let volume = to_tensor(&blobs(n)).unsqueeze(0);
        let model = ForwardModel::new(n, Device::Cpu);
        let back = model.volumes_from_centred(&model.centred_spectra(&volume));
        let err = (&back - &volume).abs().max().double_value(&[]);
        assert!(err < 1e-4, "round trip error {err}");

        let params: Vec<ImagingParams> = (0..3)
            .map(|i| RandomImaging::default().draw(5, i))
            .collect();
        let physics = BatchPhysics::new(&params, n, 5.0, false, Device::Cpu);
        let spectra = model.spectra(&volume);
        let full = model.slices(&spectra, &physics.rotations, 3); // [3][2N][N + 1]
        let ks: Vec<[i64; 2]> = vec![[1, 0], [0, 1], [3, -2], [5, 4], [0, -6], [7, 0]];
        let freqs: Vec<f32> = ks
            .iter()
            .flat_map(|k| [k[0] as f32, k[1] as f32, 0.0])
            .collect();
        let freqs = Tensor::from_slice(&freqs).view([ks.len() as i64, 3]);
        let points = model.slice_points(&spectra, &physics.rotations, 3, &freqs);
        let m = 2 * n as i64;
        for (j, k) in ks.iter().enumerate() {
            let row = (2 * k[1]).rem_euclid(m);
            let want = full.select(1, row).select(1, 2 * k[0]);
            let got = points.select(1, j as i64);
            let d = (&want - &got).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(d <= 1e-5 * scale.max(1.0), "k = {k:?}: {d} of {scale}");
        }
    }

    #[test]
    fn forward_model_matches_the_physics_crate() {
        let n = 24;
        let volume = blobs(n);
        let imaging = RandomImaging {
            max_shift: 8.0,
            ..RandomImaging::default()
        };
        let mut params: Vec<ImagingParams> = (0..6).map(|i| imaging.draw(3, i)).collect();
        // Astigmatism and a B-factor too.
        let mut rng = stream(3, Purpose::Other(7), 0);
        for p in &mut params {
            p.ctf.defocus_v = p.ctf.defocus_u * rng.random_range(0.8..1.0);
            p.ctf.defocus_angle = rng.random_range(0.0..180.0);
            p.ctf.bfactor = 40.0;
        }
        params[0].shift = Shift { x: 0.0, y: 0.0 };
        for ctf in [false, true] {
            let mut expected = Array3::zeros((params.len(), n, n));
            Simulator::new(&volume, ProjectorKind::RealSpace).clean(
                &params,
                ctf,
                expected.view_mut(),
            );
            let model = ForwardModel::new(n, Device::Cpu);
            let physics = BatchPhysics::new(&params, n, 5.0, ctf, Device::Cpu);
            let vols = to_tensor(&volume)
                .unsqueeze(0)
                .expand([params.len() as i64, n as i64, n as i64, n as i64], false);
            let got = model.clean(&vols, &physics);
            let got: Vec<f32> = got.flatten(0, -1).try_into().unwrap();
            for (i, want) in expected.outer_iter().enumerate() {
                let g = &got[i * n * n..(i + 1) * n * n];
                let num: f64 = g
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum();
                let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
                let rel = (num / den).sqrt();
                assert!(rel < 1e-3, "ctf {ctf}, image {i}: relative error {rel}");
            }
        }
    }

    #[test]
    fn fourier_forward_model_matches_the_physics_crate() {
        let n = 24;
        let volume = blobs(n);
        let imaging = RandomImaging {
            max_shift: 8.0,
            ..RandomImaging::default()
        };
        // Two volumes (the same map twice, one scaled) at three poses each.
        let params: Vec<ImagingParams> = (0..6).map(|i| imaging.draw(5, i)).collect();
        let model = ForwardModel::new(n, Device::Cpu);
        let v = to_tensor(&volume);
        let vols = Tensor::stack(&[v.shallow_clone(), &v * 2.0], 0);
        for ctf in [false, true] {
            let mut expected = Array3::zeros((params.len(), n, n));
            Simulator::new(&volume, ProjectorKind::Fourier).clean(
                &params,
                ctf,
                expected.view_mut(),
            );
            let physics = BatchPhysics::new(&params, n, 5.0, ctf, Device::Cpu);
            let got = model.clean_fourier(&vols, &physics, 3);
            let got: Vec<f32> = got.flatten(0, -1).try_into().unwrap();
            for (i, want) in expected.outer_iter().enumerate() {
                let scale = if i < 3 { 1.0 } else { 2.0 };
                let g = &got[i * n * n..(i + 1) * n * n];
                let num: f64 = g
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| f64::from(a - scale * b).powi(2))
                    .sum();
                let den: f64 = want.iter().map(|b| f64::from(scale * b).powi(2)).sum();
                let rel = (num / den).sqrt();
                assert!(rel < 1e-3, "ctf {ctf}, image {i}: relative error {rel}");
            }
        }
    }

    #[test]
    fn projection_is_differentiable_in_the_volume() {
        let n = 16;
        let model = ForwardModel::new(n, Device::Cpu);
        let params: Vec<ImagingParams> = (0..2)
            .map(|i| RandomImaging::default().draw(1, i))
            .collect();
        let physics = BatchPhysics::new(&params, n, 5.0, true, Device::Cpu);
        let v = to_tensor(&blobs(n))
            .unsqueeze(0)
            .repeat([2, 1, 1, 1])
            .set_requires_grad(true);
        let loss = model.clean(&v, &physics).square().sum(Kind::Float);
        loss.backward();
        let g = v.grad();
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(g.isfinite().all().int64_value(&[]) == 1);
    }
}
