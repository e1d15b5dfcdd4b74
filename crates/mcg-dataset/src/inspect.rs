//! What a particle set's images say about themselves before training: how they were normalised
//! (none, over the whole box, or RELION's background normalisation and at which radius) and
//! whether the particles are bright or dark, and the image sources that invert and normalise
//! images as they are read, so that the trainer can treat real and simulated images alike.

use mcg_formats::ImageSource;
use mcg_physics::normalize::{Normalization, normalize};
use ndarray::{Array3, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};

/// Images read for an inspection (spread evenly over the set).
pub const INSPECTED_IMAGES: usize = 500;

/// The relative spread, across images, of the per-image standard deviation below which the
/// images count as normalised: float32 rounding leaves ~1e-7; the noise of unnormalised images
/// leaves ~1/√(2·pixels), over 1 % on any box the trainer takes.
const NORMALISED_SPREAD: f64 = 1e-3;

/// How a set's images turned out to be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectedNormalization {
    /// The normalisation that reproduces the images' statistics (`None` when none does).
    pub normalization: Normalization,
    /// The per-image standard deviation of the region it normalises (1 for RELION's), its
    /// mean over the inspected images; for `None`, the whole box's.
    pub std: f64,
    /// The relative spread of that standard deviation across the images (near 0 for
    /// normalised images).
    pub spread: f64,
    /// Images inspected.
    pub images: usize,
}

impl std::fmt::Display for DetectedNormalization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.normalization {
            Normalization::None => write!(
                f,
                "not normalised per image (the standard deviation varies by {:.1} % across {} images)",
                100.0 * self.spread,
                self.images
            ),
            Normalization::Whole => write!(
                f,
                "normalised over the whole box (mean 0, standard deviation {:.3})",
                self.std
            ),
            Normalization::Background { radius_px } => write!(
                f,
                "normalised on the background outside a radius of {} px (RELION's: mean 0, \
                 standard deviation {:.3})",
                radius_px.map_or("N/2 − 1".to_string(), |r| format!("{r}")),
                self.std
            ),
        }
    }
}

/// The images at indices spread evenly over `source` (at most `count`).
fn sample(source: &dyn ImageSource, count: usize) -> mcg_formats::Result<Array3<f32>> {
    let len = source.len();
    let k = count.min(len);
    let n = source.box_size();
    let indices: Vec<usize> = (0..k).map(|i| i * len / k.max(1)).collect();
    let mut out = Array3::zeros((k, n, n));
    source.read_batch(&indices, out.view_mut())?;
    Ok(out)
}

/// Squared distance of pixel `(y, x)` from the box centre `(N/2, N/2)`, in pixels², exact.
fn d2(y: usize, x: usize, n: usize) -> u64 {
    let c = (n / 2) as i64;
    let (dy, dx) = (y as i64 - c, x as i64 - c);
    (dy * dy + dx * dx) as u64
}

/// Detects how `source`'s images are normalised, from [`INSPECTED_IMAGES`] of them.
///
/// Normalised images have exactly the same standard deviation (and zero mean) over the region
/// their normalisation uses, up to float rounding, while the noise of unnormalised ones makes
/// it vary by about 1/√(2·pixels). So every region a background normalisation can use (the
/// pixels strictly outside each distinct radius from N/8 to N/2 − ½) and the whole box are
/// tried, and the one whose standard deviation varies least across images wins if it varies
/// by less than 0.1 % and its mean is 0 to the same precision. The radius reported is the
/// whole number of pixels that selects that region when there is one (RELION's are whole).
pub fn detect_normalization(
    source: &dyn ImageSource,
) -> mcg_formats::Result<DetectedNormalization> {
    let images = sample(source, INSPECTED_IMAGES)?;
    Ok(detect_in(&images))
}

/// [`detect_normalization`] on images in memory, `[K][N][N]`.
pub fn detect_in(images: &Array3<f32>) -> DetectedNormalization {
    let (k, n, _) = images.dim();
    // Pixels from the outside in, and the distinct squared radii between N/8 and N/2.
    let mut order: Vec<(u64, usize)> = (0..n * n).map(|i| (d2(i / n, i % n, n), i)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let lo = ((n / 8) * (n / 8)) as u64;
    // For each image, cumulative sums over the sorted pixels; a candidate region is "the
    // first j pixels" where the radius changes between j−1 and j.
    let mut cuts: Vec<(usize, u64)> = Vec::new(); // (pixels outside, threshold d²)
    for j in 1..order.len() {
        if order[j].0 != order[j - 1].0 && order[j].0 >= lo {
            cuts.push((j, order[j].0));
        }
    }
    cuts.push((order.len(), u64::MAX)); // the whole box
    let mut stats = vec![(0.0f64, 0.0f64, 0.0f64); cuts.len()]; // Σstd, Σstd², Σ|mean|/std
    for image in images.axis_iter(Axis(0)) {
        let flat = image.as_standard_layout();
        let flat = flat.as_slice().expect("standard layout");
        let shift = f64::from(flat[order[0].1]);
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        let mut c = 0;
        for (count, (j, _)) in cuts.iter().enumerate() {
            while c < *j {
                let v = f64::from(flat[order[c].1]) - shift;
                s += v;
                s2 += v * v;
                c += 1;
            }
            let m = s / c as f64;
            let var = (s2 / c as f64 - m * m).max(0.0);
            let sd = var.sqrt();
            let e = &mut stats[count];
            e.0 += sd;
            e.1 += sd * sd;
            e.2 += if sd > 0.0 {
                (m + shift).abs() / sd
            } else {
                f64::INFINITY
            };
        }
    }
    let kf = k.max(1) as f64;
    let spread_of = |e: &(f64, f64, f64)| {
        let mean = e.0 / kf;
        let var = (e.1 / kf - mean * mean).max(0.0);
        (
            mean,
            if mean > 0.0 {
                var.sqrt() / mean
            } else {
                f64::INFINITY
            },
            e.2 / kf,
        )
    };
    let whole = cuts.len() - 1;
    let best = (0..cuts.len())
        .min_by(|&a, &b| {
            spread_of(&stats[a])
                .1
                .total_cmp(&spread_of(&stats[b]).1)
                // The whole box wins ties (a region that is the whole box is no background).
                .then((b == whole).cmp(&(a == whole)))
        })
        .unwrap_or(whole);
    let (std, spread, rel_mean) = spread_of(&stats[best]);
    let normalised = k >= 2 && spread < NORMALISED_SPREAD && rel_mean < NORMALISED_SPREAD;
    if !normalised {
        let (std, spread, _) = spread_of(&stats[whole]);
        return DetectedNormalization {
            normalization: Normalization::None,
            std,
            spread,
            images: k,
        };
    }
    let normalization = if best == whole {
        Normalization::Whole
    } else {
        // Pixels strictly outside radius r are those with d² > r²: any r with
        // t_in ≤ r² < t_out selects them, t_out the region's smallest d², t_in the next.
        let t_out = order[cuts[best].0 - 1].0;
        let t_in = cuts[best].1;
        let whole_r = (t_in as f64).sqrt().ceil();
        let r = if whole_r * whole_r < t_out as f64 {
            whole_r
        } else {
            (t_in as f64).sqrt()
        };
        Normalization::Background { radius_px: Some(r) }
    };
    DetectedNormalization {
        normalization,
        std,
        spread,
        images: k,
    }
}

/// The normalisation of `n`² images that corresponds to `how` on images cropped from
/// `from`² (a background radius scales with the box).
pub fn scaled_normalization(how: &Normalization, from: usize, n: usize) -> Normalization {
    match how {
        Normalization::Background { radius_px } => Normalization::Background {
            radius_px: Some(
                radius_px
                    .unwrap_or_else(|| mcg_physics::normalize::default_background_radius(from))
                    * n as f64
                    / from as f64,
            ),
        },
        other => *other,
    }
}

/// Whether the particles are bright (protein positive, as RELION's particles and this
/// program's simulated images are) or dark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    /// Mean over images of (mean of the central disc − mean of the outer region), in units of
    /// the outer region's standard deviation.
    pub mean: f64,
    /// `mean` over its standard error: positive, bright particles; negative, dark.
    pub z: f64,
    /// Images inspected.
    pub images: usize,
}

impl Contrast {
    /// Clearly dark particles (|z| > 3 the wrong way): the set looks inverted.
    pub fn looks_inverted(&self) -> bool {
        self.z < -3.0
    }

    /// Clearly bright particles.
    pub fn looks_bright(&self) -> bool {
        self.z > 3.0
    }
}

impl std::fmt::Display for Contrast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.looks_bright() {
            "bright particles on a dark background, as the simulator makes them"
        } else if self.looks_inverted() {
            "dark particles on a bright background: the set looks inverted"
        } else {
            "unclear (particles neither clearly bright nor dark)"
        };
        write!(
            f,
            "{verdict} (centre − background {:+.3} σ, z = {:+.1}, {} images)",
            self.mean, self.z, self.images
        )
    }
}

/// Measures the contrast of `source`'s particles on [`INSPECTED_IMAGES`] images: the central
/// disc (radius N/4) against the pixels beyond 0.45·N from the centre. A centred particle of
/// positive density, through a CTF that is positive at low frequency (the conventions), makes
/// the disc brighter than the corners.
pub fn measure_contrast(source: &dyn ImageSource) -> mcg_formats::Result<Contrast> {
    Ok(contrast_in(&sample(source, INSPECTED_IMAGES)?))
}

/// [`measure_contrast`] on images in memory, `[K][N][N]`.
pub fn contrast_in(images: &Array3<f32>) -> Contrast {
    let (k, n, _) = images.dim();
    let inner = ((n / 4) * (n / 4)) as u64;
    let outer = 0.45 * n as f64;
    let outer = (outer * outer) as u64;
    let mut values = Vec::with_capacity(k);
    for image in images.axis_iter(Axis(0)) {
        let (mut cs, mut cn, mut bs, mut bs2, mut bn) = (0.0f64, 0usize, 0.0f64, 0.0f64, 0usize);
        for ((y, x), &v) in image.indexed_iter() {
            let d = d2(y, x, n);
            let v = f64::from(v);
            if d < inner {
                cs += v;
                cn += 1;
            } else if d > outer {
                bs += v;
                bs2 += v * v;
                bn += 1;
            }
        }
        if cn == 0 || bn < 2 {
            continue;
        }
        let bm = bs / bn as f64;
        let sd = (bs2 / bn as f64 - bm * bm).max(0.0).sqrt();
        if sd > 0.0 {
            values.push((cs / cn as f64 - bm) / sd);
        }
    }
    let m = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / m;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
    let se = (var / m).sqrt();
    Contrast {
        mean,
        z: if se > 0.0 { mean / se } else { 0.0 },
        images: values.len(),
    }
}

/// The images of `inner`, negated if `invert`, then normalised by `normalization`, as they
/// are read: how the trainer sees the data, so that the images it simulates (normalised the
/// same way by the same function) and the real ones agree.
pub struct Adjusted {
    inner: Box<dyn ImageSource>,
    invert: bool,
    normalization: Normalization,
}

impl std::fmt::Debug for Adjusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adjusted")
            .field("invert", &self.invert)
            .field("normalization", &self.normalization)
            .finish_non_exhaustive()
    }
}

impl Adjusted {
    /// `inner` inverted (if `invert`) and normalised; the normalisation is checked against the
    /// box.
    pub fn new(
        inner: Box<dyn ImageSource>,
        invert: bool,
        normalization: Normalization,
    ) -> Result<Self, mcg_physics::PhysicsError> {
        normalization.validate(inner.box_size())?;
        Ok(Self {
            inner,
            invert,
            normalization,
        })
    }
}

impl ImageSource for Adjusted {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn box_size(&self) -> usize {
        self.inner.box_size()
    }

    fn pixel_size(&self) -> f64 {
        self.inner.pixel_size()
    }

    fn read_batch(
        &self,
        indices: &[usize],
        mut out: ArrayViewMut3<'_, f32>,
    ) -> mcg_formats::Result<()> {
        self.inner.read_batch(indices, out.view_mut())?;
        for mut image in out.axis_iter_mut(Axis(0)) {
            if self.invert {
                image.mapv_inplace(|v| -v);
            }
            normalize(image.view_mut(), &self.normalization);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    /// `k` images of a centred Gaussian blob of `amplitude` (σ N/8) plus white noise of σ 0.7
    /// and an offset of 3.
    fn blobs(k: usize, n: usize, amplitude: f32, seed: u64) -> Array3<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let c = (n / 2) as f32;
        let s = n as f32 / 8.0;
        Array3::from_shape_fn((k, n, n), |(_, y, x)| {
            let r2 = (y as f32 - c).powi(2) + (x as f32 - c).powi(2);
            let g: f32 = StandardNormal.sample(&mut rng);
            3.0 + amplitude * (-r2 / (2.0 * s * s)).exp() + 0.7 * g
        })
    }

    fn normalised(mut images: Array3<f32>, how: &Normalization) -> Array3<f32> {
        for image in images.axis_iter_mut(Axis(0)) {
            normalize(image, how);
        }
        images
    }

    #[test]
    fn unnormalised_images_are_detected_as_such() {
        let d = detect_in(&blobs(200, 32, 2.0, 1));
        assert_eq!(d.normalization, Normalization::None);
        assert!(d.spread > 0.01, "{d:?}");
    }

    #[test]
    fn relion_background_normalisation_and_its_radius_are_found() {
        for (n, r) in [(32usize, 12.0), (64, 24.0), (64, 31.0), (48, 18.0)] {
            let how = Normalization::Background { radius_px: Some(r) };
            let d = detect_in(&normalised(blobs(100, n, 2.0, 2), &how));
            assert_eq!(d.normalization, how, "box {n}, radius {r}: {d:?}");
            assert!((d.std - 1.0).abs() < 1e-4, "{d:?}");
            // Normalising again with what was found leaves the images as they are.
            let images = normalised(blobs(10, n, 2.0, 3), &how);
            let again = normalised(images.clone(), &d.normalization);
            let diff = (&again - &images)
                .mapv(f32::abs)
                .fold(0.0f32, |a, &b| a.max(b));
            assert!(diff < 1e-5, "box {n}: {diff}");
        }
    }

    #[test]
    fn whole_box_normalisation_is_found() {
        let d = detect_in(&normalised(blobs(100, 32, 2.0, 4), &Normalization::Whole));
        assert_eq!(d.normalization, Normalization::Whole, "{d:?}");
    }

    #[test]
    fn bright_and_dark_particles_are_told_apart() {
        let bright = contrast_in(&blobs(200, 32, 1.0, 5));
        assert!(
            bright.looks_bright() && !bright.looks_inverted(),
            "{bright:?}"
        );
        let dark = contrast_in(&blobs(200, 32, -1.0, 6));
        assert!(dark.looks_inverted() && !dark.looks_bright(), "{dark:?}");
        let none = contrast_in(&blobs(200, 32, 0.0, 7));
        assert!(!none.looks_inverted() && !none.looks_bright(), "{none:?}");
    }

    #[test]
    fn adjusted_images_are_inverted_then_normalised() {
        let images = blobs(4, 16, 2.0, 8);
        let how = Normalization::Background {
            radius_px: Some(6.0),
        };
        let source = Adjusted::new(
            Box::new(mcg_formats::particles::InMemory::new(images.clone(), 5.0)),
            true,
            how,
        )
        .unwrap();
        let mut out = Array3::zeros((2, 16, 16));
        source.read_batch(&[3, 1], out.view_mut()).unwrap();
        for (j, i) in [3usize, 1].into_iter().enumerate() {
            let mut want = images.index_axis(Axis(0), i).mapv(|v| -v);
            normalize(want.view_mut(), &how);
            assert_eq!(out.index_axis(Axis(0), j), want);
        }
    }
}
