//! The particle images as the likelihood sees them: their centred spectra at a set of
//! frequencies, whitened by the noise and weighted by each image's CTF and shift.
//!
//! For an image `Y` (centred half-plane spectrum, the physics crate's layout) with CTF `C`,
//! recorded shift ramp `r` and noise power `P` (`E|noise|² = N²·P` per coefficient), the
//! Gaussian log-likelihood of a template `t` (a central slice) is, up to a constant per image,
//!
//! `L(t) = Re Σ_f conj(a_f)·t_f − ½ Σ_f q_f·|t_f|²`, with `a = λ·C·conj(r)·Y`, `q = λ·C²`,
//!
//! where `λ_f = w_f / (N²·P_f)` and `w_f` counts the full-plane coefficients that a stored
//! half-plane one stands for (2, or 1 on the `kx = 0` column, which holds both mates). Both
//! terms are matrix products over the frequencies, which is how the E-step computes them.

use mcg_formats::{ImageSource, ParticleSet};
use mcg_physics::ctf::CtfGrid;
use mcg_physics::fourier::{Fft2, half_width};
use mcg_physics::noise::NoiseSpectrum;
use mcg_physics::shift::translate_spectrum;
use ndarray::Array3;
use rustfft::num_complex::Complex32;
use tch::{Device, Tensor};

/// The image frequencies the likelihood uses: every stored half-plane frequency with
/// `0 < |k| ≤ r_max`, sorted by radius, so that a lower limit is a prefix.
#[derive(Debug, Clone)]
pub struct Frequencies {
    /// `(kx, ky)`, signed, sorted by `|k|`.
    pub k: Vec<[i64; 2]>,
    /// `|k|` in pixels of the `N` grid.
    pub radius: Vec<f64>,
    /// The index of each in the `N` grid's half-plane layout (`ky_row·(N/2 + 1) + kx`).
    pub index: Vec<usize>,
    /// Full-plane coefficients each stands for: 1 on the `kx = 0` column, else 2.
    pub weight: Vec<f32>,
}

impl Frequencies {
    /// The frequencies of `n`-pixel images with `0 < |k| ≤ r_max` (`r_max < n/2`, so no
    /// Nyquist term).
    pub fn new(n: usize, r_max: f64) -> Self {
        let h = half_width(n);
        let r_max = r_max.min(n as f64 / 2.0 - 1.0);
        let mut all = Vec::new();
        for row in 0..n {
            let ky = mcg_physics::fourier::signed_freq(row, n);
            for kx in 0..h as i64 {
                let r = ((kx * kx + ky * ky) as f64).sqrt();
                if r > 0.0 && r <= r_max + 1e-9 {
                    all.push((r, [kx, ky], row * h + kx as usize));
                }
            }
        }
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
        Self {
            radius: all.iter().map(|a| a.0).collect(),
            k: all.iter().map(|a| a.1).collect(),
            index: all.iter().map(|a| a.2).collect(),
            weight: all
                .iter()
                .map(|a| if a.1[0] == 0 { 1.0 } else { 2.0 })
                .collect(),
        }
    }

    /// How many frequencies have `|k| ≤ r`.
    pub fn count_within(&self, r: f64) -> usize {
        self.radius.partition_point(|&x| x <= r + 1e-9)
    }

    /// Number of frequencies.
    pub fn len(&self) -> usize {
        self.k.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    /// The first `count` as `(kx, ky, 0)` rows, `[count][3]`, float, on `device`.
    pub fn tensor(&self, count: usize, device: Device) -> Tensor {
        let v: Vec<f32> = self.k[..count]
            .iter()
            .flat_map(|k| [k[0] as f32, k[1] as f32, 0.0])
            .collect();
        Tensor::from_slice(&v)
            .view([count as i64, 3])
            .to_device(device)
    }
}

/// The whitened, CTF-weighted spectra of a set's images (see the module notes), on the device.
#[derive(Debug)]
pub struct ImageTerms {
    /// `a = λ·C·conj(r)·Y`, `[I][F]` complex.
    pub a: Tensor,
    /// `q = λ·C²`, `[I][F]`.
    pub q: Tensor,
    /// `λ·|Y|²`, `[I][F]`: the constant of each image's log-likelihood.
    pub yy: Tensor,
}

impl ImageTerms {
    /// The terms of `images` (the set's particles in order) at `freqs`, with the noise power
    /// spectrum `noise` (its pixel variance is σ²); the CTF applies when `ctf`. Images are
    /// read in batches of 512.
    pub fn new(
        set: &ParticleSet,
        images: &dyn ImageSource,
        freqs: &Frequencies,
        noise: &NoiseSpectrum,
        ctf: bool,
        apix: f64,
        device: Device,
    ) -> anyhow::Result<Self> {
        let n = images.box_size();
        let count = images.len();
        let f = freqs.len();
        let power: Vec<f32> = noise.amplitude_filter().iter().map(|a| a * a).collect();
        let lambda: Vec<f32> = freqs
            .index
            .iter()
            .zip(&freqs.weight)
            .map(|(&i, &w)| w / ((n * n) as f32 * power[i].max(f32::MIN_POSITIVE)))
            .collect();
        let grid = CtfGrid::new(n, apix);
        let mut fft = Fft2::new(n);
        let mut spec = vec![Complex32::new(0.0, 0.0); fft.spectrum_len()];
        let mut ctf_values = vec![1.0f32; spec.len()];
        let mut ramp = vec![Complex32::new(1.0, 0.0); spec.len()];
        let mut a = Vec::with_capacity(count * f * 2);
        let mut q = Vec::with_capacity(count * f);
        let mut yy = Vec::with_capacity(count * f);
        let batch = 512;
        let mut start = 0;
        while start < count {
            let len = batch.min(count - start);
            let mut block = Array3::<f32>::zeros((len, n, n));
            let indices: Vec<usize> = (start..start + len).collect();
            images.read_batch(&indices, block.view_mut())?;
            for (j, image) in block.outer_iter().enumerate() {
                let p = &set.particles[start + j];
                fft.forward(image, &mut spec);
                if ctf {
                    grid.evaluate(&p.ctf, &mut ctf_values);
                }
                ramp.fill(Complex32::new(1.0, 0.0));
                if p.shift.x != 0.0 || p.shift.y != 0.0 {
                    let [tx, ty] = p.shift.simulation_translation(apix);
                    translate_spectrum(&mut ramp, n, tx, ty);
                }
                for (fi, &i) in freqs.index.iter().enumerate() {
                    let l = lambda[fi];
                    let c = ctf_values[i];
                    let v = ramp[i].conj() * spec[i] * (l * c);
                    a.push(v.re);
                    a.push(v.im);
                    q.push(l * c * c);
                    yy.push(l * spec[i].norm_sqr());
                }
            }
            start += len;
        }
        let (ci, cf) = (count as i64, f as i64);
        Ok(Self {
            a: Tensor::from_slice(&a)
                .view([ci, cf, 2])
                .to_device(device)
                .view_as_complex(),
            q: Tensor::from_slice(&q).view([ci, cf]).to_device(device),
            yy: Tensor::from_slice(&yy).view([ci, cf]).to_device(device),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.q.size()[0] as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images `rows` (`[B]` int64 indices) at the first `f` frequencies.
    pub fn select(&self, rows: &Tensor, f: i64) -> Self {
        Self {
            a: self.a.index_select(0, rows).narrow(1, 0, f),
            q: self.q.index_select(0, rows).narrow(1, 0, f),
            yy: self.yy.index_select(0, rows).narrow(1, 0, f),
        }
    }
}

/// The phase ramps `[S][F]` (complex) that translate a model image by each of `offsets`
/// (pixels, `[tx, ty]`, content moving by `+t`), at `freqs`: the physics crate's
/// `translate_spectrum` of a constant spectrum.
pub fn offset_ramps(offsets: &[[f64; 2]], n: usize, freqs: &Frequencies, device: Device) -> Tensor {
    let h = half_width(n);
    let mut data = Vec::with_capacity(offsets.len() * freqs.len() * 2);
    for &[tx, ty] in offsets {
        let mut ramp = vec![Complex32::new(1.0, 0.0); n * h];
        translate_spectrum(&mut ramp, n, tx, ty);
        for &i in &freqs.index {
            data.push(ramp[i].re);
            data.push(ramp[i].im);
        }
    }
    Tensor::from_slice(&data)
        .view([offsets.len() as i64, freqs.len() as i64, 2])
        .to_device(device)
        .view_as_complex()
}

/// The offsets of a disc of radius `range` pixels on a grid of `step` pixels, `[0, 0]` first
/// (only it when `range` or `step` is not positive).
pub fn disc_offsets(range: f64, step: f64) -> Vec<[f64; 2]> {
    let mut out = vec![[0.0, 0.0]];
    if range <= 0.0 || step <= 0.0 {
        return out;
    }
    let steps = (range / step).floor() as i64;
    for iy in -steps..=steps {
        for ix in -steps..=steps {
            let (x, y) = (ix as f64 * step, iy as f64 * step);
            if (ix, iy) != (0, 0) && x * x + y * y <= range * range + 1e-9 {
                out.push([x, y]);
            }
        }
    }
    out
}
