//! Maps scored against the particles by their likelihood with the poses marginalised: the
//! truth-free judge of a landscape that the GAN refines from the classes.
//!
//! A [`Scorer`] holds a fixed subset of a particle set (spread evenly over it) as the E-step
//! sees it: the same noise, CTFs, offsets and rotation search as the classification with the
//! same settings, at a given frequency limit. [`Scorer::score`] gives the mean log-likelihood
//! per image of a mixture of maps with given weights, each image's pose and offset summed over
//! the search. Each map's scale is a nuisance (a GAN's maps are in the units of its own
//! normalised data): it is fitted by least squares at the images' most probable poses before
//! the map is scored.

use anyhow::{Result, bail};
use mcg_dataset::input;
use mcg_formats::ImageSource;
use mcg_forward::device;
use mcg_forward::forward::ForwardModel;
use mcg_physics::Volume;
use mcg_physics::pose::Mat3;
use tch::{Device, Tensor};

use crate::em;
use crate::images::{Frequencies, ImageTerms, offset_ramps};
use crate::run::{ClassifySettings, angular_step, fit_scale, noise_of, offsets_of, search_of};

/// The images a landscape is scored on (at most), spread evenly over the set.
pub const SCORE_IMAGES: usize = 1000;

/// A fixed subset of a particle set, ready to score maps (see the module notes).
pub struct Scorer {
    model: ForwardModel,
    terms: ImageTerms,
    half: Vec<u8>,
    ramps: Tensor,
    freqs: Tensor,
    f: i64,
    search: em::Search,
    batch_bytes: f64,
    box_size: usize,
    apix: f64,
    device: Device,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("images", &self.terms.len())
            .field("frequencies", &self.f)
            .field("rotations", &self.search.grid.len())
            .finish_non_exhaustive()
    }
}

impl Scorer {
    /// The first of every `count / images` particles of `s.particles` (at most `images`), at
    /// frequencies up to `r_max` pixels, searched as the classification `s` searches at that
    /// limit (its angular step for `r_max`, its offsets, its local refinement).
    pub fn new(s: &ClassifySettings, r_max: f64, images: usize) -> Result<Self> {
        if images == 0 {
            bail!("a score needs at least one image");
        }
        let (mut set, source) = input::particles(&s.particles, &s.locate)?;
        let n = source.box_size();
        let apix = set.optics_of(0).pixel_size;
        let dev = device::select(s.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
        // The noise as the classification measures it, on the whole set.
        let (_, noise, _) = noise_of(s, source.as_ref(), n)?;
        let offsets = offsets_of(s, &set);
        let count = set.len();
        let take = count.min(images);
        let keep: Vec<usize> = (0..take).map(|i| i * count / take).collect();
        let source = input::subset(&mut set, source, keep);
        let freqs_all = Frequencies::new(n, r_max);
        let terms = ImageTerms::new(&set, source.as_ref(), &freqs_all, &noise, s.ctf, apix, dev)?;
        let ramps = offset_ramps(&offsets, n, &freqs_all, dev);
        let f = freqs_all.len();
        let step = angular_step(r_max, s.angular_step_deg, s.coarse_step_deg);
        Ok(Self {
            model: ForwardModel::new(n, dev),
            terms,
            half: vec![0; take],
            ramps,
            freqs: freqs_all.tensor(f, dev),
            f: f as i64,
            search: search_of(s, step, dev),
            batch_bytes: s.batch_bytes,
            box_size: n,
            apix,
            device: dev,
        })
    }

    /// The number of images scored.
    pub fn images(&self) -> usize {
        self.terms.len()
    }

    /// Each image's log-likelihood (nats, up to a constant that is the same for every model)
    /// under map `map`, its scale fitted first; and the scale.
    pub fn per_image(&self, map: &Volume) -> Result<(Vec<f64>, f64)> {
        let (e, c) = self.fitted(map)?;
        Ok((e.log_likelihood, c))
    }

    /// Each image's most probable rotation (RELION matrix) under map `map`, its scale fitted
    /// first: the rotation of the search's grid at the image's largest posterior.
    pub fn most_probable_rotations(&self, map: &Volume) -> Result<Vec<Mat3>> {
        let (e, _) = self.fitted(map)?;
        Ok(e.best
            .iter()
            .map(|b| self.search.grid.matrices[b[2]])
            .collect())
    }

    /// The E-step of `map` scaled by its least-squares scale at its most probable poses, and
    /// the scale.
    fn fitted(&self, map: &Volume) -> Result<(em::Expectation, f64)> {
        if map.box_size() != self.box_size
            || (f64::from(map.apix()) - self.apix).abs() > 1e-3 * self.apix
        {
            bail!(
                "a map of {}³ voxels of {:.4} Å, expected the particles' {}³ of {:.4} Å",
                map.box_size(),
                map.apix(),
                self.box_size,
                self.apix
            );
        }
        if map.data().iter().any(|v| !v.is_finite()) {
            bail!("a map with non-finite voxels cannot be scored");
        }
        let v = em::to_tensor(&[map], self.device);
        let t = self.search.templates(&self.model, &v, &self.freqs);
        let e_step = |t: &em::SearchTemplates| {
            self.search.expectation(
                t,
                &self.terms,
                &self.half,
                &[0.0],
                &self.ramps,
                self.batch_bytes,
                &|| false,
            )
        };
        let first = e_step(&t);
        let c = fit_scale(&self.terms, &t.fine, 1, &self.ramps, &first.best, self.f);
        if !(c.is_finite() && c != 0.0) {
            bail!("the map does not correlate with the images (scale {c})");
        }
        Ok((e_step(&t.scaled(c)), c))
    }

    /// The mean log-likelihood per image of the mixture of `maps` with `weights` (positive;
    /// normalised here): `mean_i log Σ_k w_k·p(y_i | map_k)`.
    pub fn score(&self, maps: &[Volume], weights: &[f64]) -> Result<f64> {
        if maps.is_empty() || maps.len() != weights.len() {
            bail!(
                "{} maps and {} weights: expected one weight per map, at least one map",
                maps.len(),
                weights.len()
            );
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            bail!("weights {weights:?}: expected positive numbers");
        }
        let total: f64 = weights.iter().sum();
        let per_map = maps
            .iter()
            .map(|m| self.per_image(m).map(|(ll, _)| ll))
            .collect::<Result<Vec<_>>>()?;
        Ok(mixture_log_likelihood(
            &per_map,
            &weights.iter().map(|w| w / total).collect::<Vec<_>>(),
        ))
    }
}

/// `mean_i log Σ_k w_k·exp(ll[k][i])`, computed stably.
pub fn mixture_log_likelihood(per_map: &[Vec<f64>], weights: &[f64]) -> f64 {
    let count = per_map.first().map_or(0, Vec::len);
    if count == 0 {
        return f64::NAN;
    }
    let mut sum = 0.0;
    for i in 0..count {
        let terms: Vec<f64> = per_map
            .iter()
            .zip(weights)
            .map(|(ll, w)| w.ln() + ll[i])
            .collect();
        let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        sum += top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
    }
    sum / count as f64
}
