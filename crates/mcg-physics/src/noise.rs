//! Gaussian noise at a data-set-level SNR (`ARCHITECTURE.md`, "Conventions", "Noise and SNR"):
//! white here, coloured by a radially symmetric power spectrum in [`spectrum`].
//!
//! SNR is a power ratio `s²/σ²`: `s²` is the variance of the clean, CTF-modulated images over the
//! whole box, averaged over the data set ([`SignalVarianceEstimate`], on at least 1,000 clean
//! images), and `σ` the standard deviation of the added noise. −10 dB is SNR 0.1.

use ndarray::{ArrayView2, ArrayViewMut2};
use rand_distr::{Distribution, StandardNormal};

pub mod spectrum;

pub use spectrum::{ColouredNoise, NoiseSpectrum, add_coloured_noise};

/// The SNR definition, in one sentence, for data-set manifests (record it next to `σ`).
pub const SNR_DEFINITION: &str = "SNR = s²/σ² (power ratio; dB = 10·log10 SNR), where s² is the \
    variance of the clean, CTF-modulated images over the whole box, averaged over the data set, \
    and σ is the standard deviation of the added white Gaussian noise";

/// [`SNR_DEFINITION`] for coloured noise ([`NoiseSpectrum`]): σ is the noise's pixel standard
/// deviation, whatever its spectrum.
pub const SNR_DEFINITION_COLOURED: &str = "SNR = s²/σ² (power ratio; dB = 10·log10 SNR), where \
    s² is the variance of the clean, CTF-modulated images over the whole box, averaged over the \
    data set, and σ² is the pixel variance of the added coloured Gaussian noise (the mean of its \
    power spectrum over the frequencies of the box)";

/// The noise standard deviation `σ = √(s² / 10^(snr_db/10))` (image intensity units) that gives
/// `snr_db` decibels for signal variance `s²` (intensity units squared).
pub fn sigma_for_snr_db(signal_variance: f64, snr_db: f64) -> f64 {
    (signal_variance / 10f64.powf(snr_db / 10.0)).sqrt()
}

/// The SNR in decibels, `10·log10(s²/σ²)`, of signal variance `s²` against noise of standard
/// deviation `σ` (same intensity units).
pub fn snr_db(signal_variance: f64, sigma: f64) -> f64 {
    10.0 * (signal_variance / (sigma * sigma)).log10()
}

/// The variance of the pixels of `image` over the whole box (population variance, dividing by
/// the pixel count), in intensity units squared, accumulated in `f64`. 0 for an empty image.
pub fn image_variance(image: ArrayView2<'_, f32>) -> f64 {
    let n = image.len();
    if n == 0 {
        return 0.0;
    }
    let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    image
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n as f64
}

/// Adds independent `N(0, σ²)` noise to every pixel of `image` (σ in intensity units), drawing
/// from `rng` in row-major (logical) order, so the result depends only on the generator's state.
pub fn add_white_noise<R: rand::Rng + ?Sized>(
    mut image: ArrayViewMut2<'_, f32>,
    sigma: f32,
    rng: &mut R,
) {
    for v in image.iter_mut() {
        let z: f32 = StandardNormal.sample(rng);
        *v += sigma * z;
    }
}

/// Running estimate of the data-set signal variance `s²`: the mean, over images, of each clean
/// image's whole-box variance ([`image_variance`]), with its standard error. Welford's update in
/// `f64`; estimates from separate threads combine with [`SignalVarianceEstimate::merge`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SignalVarianceEstimate {
    count: u64,
    mean: f64,
    /// Sum of squared deviations of the per-image variances from their running mean.
    m2: f64,
}

impl SignalVarianceEstimate {
    /// An estimate over no images.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one clean (noise-free, CTF-modulated) image.
    pub fn add(&mut self, image: ArrayView2<'_, f32>) {
        self.add_variance(image_variance(image));
    }

    /// Adds one image's whole-box variance (intensity units squared), already computed.
    pub fn add_variance(&mut self, variance: f64) {
        self.count += 1;
        let delta = variance - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (variance - self.mean);
    }

    /// Combines with an estimate over other images (Chan et al.'s parallel update), as if every
    /// image of `other` had been added here.
    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let total = self.count + other.count;
        let delta = other.mean - self.mean;
        let weight = other.count as f64 / total as f64;
        self.mean += delta * weight;
        self.m2 += other.m2 + delta * delta * self.count as f64 * weight;
        self.count = total;
    }

    /// Number of images added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The estimate of `s²` (intensity units squared); `None` before any image.
    pub fn mean_variance(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Standard error of [`Self::mean_variance`] (spread of per-image variances / √count);
    /// `None` with fewer than two images.
    pub fn standard_error(&self) -> Option<f64> {
        (self.count > 1).then(|| (self.m2 / (self.count - 1) as f64 / self.count as f64).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Purpose, stream};
    use ndarray::Array2;

    #[test]
    fn noise_has_the_requested_variance() {
        let n = 256;
        for sigma in [0.05f32, 0.7, 3.0] {
            let mut image = Array2::<f32>::from_elem((n, n), 1.5);
            add_white_noise(image.view_mut(), sigma, &mut stream(11, Purpose::Noise, 0));
            let count = (n * n) as f64;
            let s2 = f64::from(sigma).powi(2);
            // Standard error of a sample variance of Gaussian noise: σ²·√(2/n); of the mean: σ/√n.
            let var = image_variance(image.view());
            assert!(
                (var - s2).abs() < 4.0 * s2 * (2.0 / count).sqrt(),
                "σ={sigma}: {var}"
            );
            let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / count;
            assert!((mean - 1.5).abs() < 4.0 * f64::from(sigma) / count.sqrt());
        }
    }

    #[test]
    fn noise_is_deterministic_per_stream() {
        let draw = |index| {
            let mut image = Array2::<f32>::zeros((8, 8));
            add_white_noise(image.view_mut(), 1.0, &mut stream(3, Purpose::Noise, index));
            image
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
        // A dyn generator works too and draws the same numbers.
        let mut image = Array2::<f32>::zeros((8, 8));
        let mut rng = stream(3, Purpose::Noise, 0);
        let dynamic: &mut dyn rand::RngCore = &mut rng;
        add_white_noise(image.view_mut(), 1.0, dynamic);
        assert_eq!(image, draw(0));
    }

    #[test]
    fn snr_conversions() {
        let s2 = 2.3;
        assert!((sigma_for_snr_db(s2, -10.0) - (s2 / 0.1).sqrt()).abs() < 1e-12);
        assert!((sigma_for_snr_db(s2, 0.0) - s2.sqrt()).abs() < 1e-12);
        assert!((sigma_for_snr_db(s2, 20.0) - (s2 / 100.0).sqrt()).abs() < 1e-12);
        for db in [-20.0, -10.0, -3.0, 0.0, 7.5] {
            assert!(
                (snr_db(s2, sigma_for_snr_db(s2, db)) - db).abs() < 1e-10,
                "{db}"
            );
        }
        assert!((snr_db(1.0, 1.0 / 10f64.sqrt()) - 10.0).abs() < 1e-10);
    }

    #[test]
    fn image_variance_is_the_whole_box_population_variance() {
        let image = Array2::from_shape_vec((2, 2), vec![1.0f32, 3.0, 5.0, 7.0]).unwrap();
        assert!((image_variance(image.view()) - 5.0).abs() < 1e-12);
        // Large offsets must not cost precision (two-pass in f64).
        let shifted = image.mapv(|v| v + 10_000.0);
        assert!((image_variance(shifted.view()) - 5.0).abs() < 1e-6);
        assert_eq!(image_variance(Array2::<f32>::zeros((0, 0)).view()), 0.0);
    }

    #[test]
    fn signal_variance_estimate_averages_and_merges() {
        let variances: Vec<f64> = (0..50).map(|i| 1.0 + 0.1 * i as f64).collect();
        let mut all = SignalVarianceEstimate::new();
        assert_eq!(all.mean_variance(), None);
        for &v in &variances {
            all.add_variance(v);
        }
        let mean = variances.iter().sum::<f64>() / 50.0;
        let sd = (variances.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 49.0).sqrt();
        assert_eq!(all.count(), 50);
        assert!((all.mean_variance().unwrap() - mean).abs() < 1e-12);
        assert!((all.standard_error().unwrap() - sd / 50f64.sqrt()).abs() < 1e-12);

        let (mut left, mut right) = (SignalVarianceEstimate::new(), SignalVarianceEstimate::new());
        variances[..17].iter().for_each(|&v| left.add_variance(v));
        variances[17..].iter().for_each(|&v| right.add_variance(v));
        left.merge(&right);
        assert_eq!(left.count(), 50);
        assert!((left.mean_variance().unwrap() - mean).abs() < 1e-12);
        assert!((left.standard_error().unwrap() - all.standard_error().unwrap()).abs() < 1e-12);

        let mut from_images = SignalVarianceEstimate::new();
        let a = Array2::from_shape_vec((1, 2), vec![0.0f32, 2.0]).unwrap(); // variance 1
        let b = Array2::from_shape_vec((1, 2), vec![5.0f32, 11.0]).unwrap(); // variance 9
        from_images.add(a.view());
        from_images.add(b.view());
        assert!((from_images.mean_variance().unwrap() - 5.0).abs() < 1e-12);
    }
}
