//! Per-image intensity normalisation.
//!
//! RELION normalises particles on the background: the mean and standard deviation come from the
//! pixels outside a circle about the box centre, so the particle itself does not bias them.

use std::fmt;
use std::str::FromStr;

use ndarray::ArrayViewMut2;
use serde::{Deserialize, Serialize};

use crate::PhysicsError;

/// How each image's intensities are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Normalization {
    /// Leave intensities as they are.
    None,
    /// Zero mean and unit standard deviation over the whole box.
    Whole,
    /// Zero mean and unit standard deviation of the background: the pixels strictly outside the
    /// circle of radius `radius_px` pixels about pixel `(N/2, N/2)` (RELION's particle
    /// normalisation). `None` means the default radius for the box, `N/2 − 1`
    /// ([`default_background_radius`]).
    Background {
        /// Radius of the particle circle in pixels, or `None` for `N/2 − 1`.
        radius_px: Option<f64>,
    },
}

impl Normalization {
    /// The background radius in pixels this normalisation uses on images of edge `n` pixels, or
    /// `None` if it does not use a background.
    pub fn background_radius(&self, n: usize) -> Option<f64> {
        match self {
            Normalization::Background { radius_px } => {
                Some(radius_px.unwrap_or_else(|| default_background_radius(n)))
            }
            Normalization::None | Normalization::Whole => None,
        }
    }

    /// Checks that this normalisation is usable on `n × n` images: a background radius must be
    /// finite, non-negative, and leave at least two pixels outside the circle.
    pub fn validate(&self, n: usize) -> Result<(), PhysicsError> {
        let Some(radius) = self.background_radius(n) else {
            return Ok(());
        };
        if !(radius.is_finite() && radius >= 0.0) {
            return Err(PhysicsError::Parameter {
                name: "background radius (px)",
                value: radius,
                expected: "a finite radius of at least 0 pixels",
            });
        }
        let c = (n / 2) as f64;
        let outside = (0..n * n)
            .filter(|i| {
                let (y, x) = ((i / n) as f64 - c, (i % n) as f64 - c);
                x * x + y * y > radius * radius
            })
            .count();
        if outside < 2 {
            return Err(PhysicsError::Parameter {
                name: "background radius (px)",
                value: radius,
                expected: "a radius that leaves background pixels outside the circle",
            });
        }
        Ok(())
    }
}

/// The default background radius for images of edge `n` pixels: `N/2 − 1` pixels.
pub fn default_background_radius(n: usize) -> f64 {
    n as f64 / 2.0 - 1.0
}

impl fmt::Display for Normalization {
    /// `none`, `whole`, `background` (default radius) or `background:R` (R pixels): the forms
    /// [`FromStr`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Normalization::None => f.write_str("none"),
            Normalization::Whole => f.write_str("whole"),
            Normalization::Background { radius_px: None } => f.write_str("background"),
            Normalization::Background { radius_px: Some(r) } => write!(f, "background:{r}"),
        }
    }
}

/// Error of parsing a [`Normalization`] from text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown normalisation {0:?}: expected none, whole, background or background:RADIUS (pixels)"
)]
pub struct ParseNormalizationError(String);

impl FromStr for Normalization {
    type Err = ParseNormalizationError;

    /// Reads `none`, `whole`, `background` (radius `N/2 − 1`) or `background:R` /
    /// `background=R` with `R` a finite, non-negative radius in pixels; case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseNormalizationError(s.to_owned());
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "none" => return Ok(Normalization::None),
            "whole" => return Ok(Normalization::Whole),
            "background" => return Ok(Normalization::Background { radius_px: None }),
            _ => {}
        }
        let radius = lower
            .strip_prefix("background")
            .and_then(|rest| rest.strip_prefix(':').or_else(|| rest.strip_prefix('=')))
            .ok_or_else(err)?;
        let radius: f64 = radius.trim().parse().map_err(|_| err())?;
        if radius.is_finite() && radius >= 0.0 {
            Ok(Normalization::Background {
                radius_px: Some(radius),
            })
        } else {
            Err(err())
        }
    }
}

/// Normalises `image` (`[y][x]`, centre pixel `(ny/2, nx/2)`) in place: subtracts the mean and
/// divides by the (population) standard deviation of the pixels `how` names, computed in `f64`.
///
/// If that standard deviation is 0 (a constant region), the image is only shifted to zero mean
/// and left unscaled (scale 1), so no NaN or infinity appears. If a background radius leaves no
/// pixel outside its circle, the image is left unchanged; [`Normalization::validate`] catches
/// that case up front.
pub fn normalize(mut image: ArrayViewMut2<'_, f32>, how: &Normalization) {
    let (ny, nx) = image.dim();
    let stats = match how {
        Normalization::None => return,
        Normalization::Whole => Moments::of(image.iter().copied()),
        Normalization::Background { .. } => {
            let radius = how.background_radius(nx.max(ny)).unwrap_or(0.0);
            let r2 = radius * radius;
            let (cy, cx) = ((ny / 2) as f64, (nx / 2) as f64);
            Moments::of(image.indexed_iter().filter_map(|((y, x), &v)| {
                let (dy, dx) = (y as f64 - cy, x as f64 - cx);
                (dx * dx + dy * dy > r2).then_some(v)
            }))
        }
    };
    let Some((mean, std)) = stats.mean_std() else {
        return;
    };
    let scale = if std > 0.0 { 1.0 / std } else { 1.0 };
    image.mapv_inplace(|v| ((f64::from(v) - mean) * scale) as f32);
}

/// Sums for a mean and population standard deviation, shifted by the first value so that large
/// offsets do not cancel catastrophically.
struct Moments {
    count: usize,
    shift: f64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn of(values: impl Iterator<Item = f32>) -> Self {
        let mut m = Moments {
            count: 0,
            shift: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
        };
        for v in values {
            let v = f64::from(v);
            if m.count == 0 {
                m.shift = v;
            }
            let d = v - m.shift;
            m.count += 1;
            m.sum += d;
            m.sum_sq += d * d;
        }
        m
    }

    fn mean_std(&self) -> Option<(f64, f64)> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let mean_d = self.sum / n;
        let var = (self.sum_sq / n - mean_d * mean_d).max(0.0);
        Some((self.shift + mean_d, var.sqrt()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn seeded(n: usize, seed: u64) -> Array2<f32> {
        let mut state = seed;
        Array2::from_shape_fn((n, n), |_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 + 3.0
        })
    }

    fn mean_std(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    fn outside(image: &Array2<f32>, radius: f64) -> Vec<f64> {
        let c = (image.nrows() / 2) as f64;
        image
            .indexed_iter()
            .filter(|((y, x), _)| {
                (*x as f64 - c).powi(2) + (*y as f64 - c).powi(2) > radius * radius
            })
            .map(|(_, &v)| f64::from(v))
            .collect()
    }

    #[test]
    fn whole_gives_zero_mean_unit_std() {
        let mut image = seeded(32, 1);
        normalize(image.view_mut(), &Normalization::Whole);
        let all: Vec<f64> = image.iter().map(|&v| f64::from(v)).collect();
        let (mean, std) = mean_std(&all);
        assert!(
            mean.abs() < 1e-6 && (std - 1.0).abs() < 1e-6,
            "{mean} {std}"
        );
    }

    #[test]
    fn background_normalises_the_outside_only() {
        let n = 32;
        for radius_px in [None, Some(10.0)] {
            let mut image = seeded(n, 2);
            // A bright particle inside the circle must not affect the statistics.
            let c = n / 2;
            for y in c - 4..c + 4 {
                for x in c - 4..c + 4 {
                    image[[y, x]] += 100.0;
                }
            }
            let how = Normalization::Background { radius_px };
            let radius = how.background_radius(n).unwrap();
            normalize(image.view_mut(), &how);
            let (mean, std) = mean_std(&outside(&image, radius));
            assert!(
                mean.abs() < 1e-6 && (std - 1.0).abs() < 1e-6,
                "{radius_px:?}: {mean} {std}"
            );
            // The whole box, particle included, is far from unit std.
            let all: Vec<f64> = image.iter().map(|&v| f64::from(v)).collect();
            assert!(mean_std(&all).1 > 3.0);
        }
        assert_eq!(
            Normalization::Background { radius_px: None }.background_radius(64),
            Some(31.0)
        );
    }

    #[test]
    fn constant_image_gives_no_nan() {
        for how in [
            Normalization::Whole,
            Normalization::Background { radius_px: None },
        ] {
            let mut image = Array2::from_elem((16, 16), 4.25f32);
            normalize(image.view_mut(), &how);
            assert!(image.iter().all(|&v| v == 0.0), "{how}");
        }
        // Constant background, structured particle: zero-mean background, particle unscaled.
        let mut image = Array2::from_elem((16, 16), 2.0f32);
        image[[8, 8]] = 5.0;
        normalize(
            image.view_mut(),
            &Normalization::Background {
                radius_px: Some(3.0),
            },
        );
        assert_eq!(image[[0, 0]], 0.0);
        assert_eq!(image[[8, 8]], 3.0);
    }

    #[test]
    fn none_leaves_the_image() {
        let mut image = seeded(8, 3);
        let before = image.clone();
        normalize(image.view_mut(), &Normalization::None);
        assert_eq!(image, before);
    }

    #[test]
    fn huge_radius_is_rejected_and_harmless() {
        let how = Normalization::Background {
            radius_px: Some(100.0),
        };
        assert!(how.validate(16).is_err());
        assert!(
            Normalization::Background {
                radius_px: Some(-1.0)
            }
            .validate(16)
            .is_err()
        );
        assert!(
            Normalization::Background { radius_px: None }
                .validate(16)
                .is_ok()
        );
        assert!(Normalization::Whole.validate(16).is_ok());
        let mut image = seeded(16, 4);
        let before = image.clone();
        normalize(image.view_mut(), &how);
        assert_eq!(image, before);
    }

    #[test]
    fn parse_and_display_round_trip() {
        assert_eq!("none".parse(), Ok(Normalization::None));
        assert_eq!("Whole".parse(), Ok(Normalization::Whole));
        assert_eq!(
            "background".parse(),
            Ok(Normalization::Background { radius_px: None })
        );
        assert_eq!(
            "background:12.5".parse(),
            Ok(Normalization::Background {
                radius_px: Some(12.5)
            })
        );
        assert_eq!(
            "background=7".parse(),
            Ok(Normalization::Background {
                radius_px: Some(7.0)
            })
        );
        for bad in [
            "",
            "back",
            "background:",
            "background:-2",
            "background:nan",
            "wholex",
        ] {
            assert!(bad.parse::<Normalization>().is_err(), "{bad:?}");
        }
        for how in [
            Normalization::None,
            Normalization::Whole,
            Normalization::Background { radius_px: None },
            Normalization::Background {
                radius_px: Some(9.5),
            },
        ] {
            assert_eq!(how.to_string().parse(), Ok(how));
        }
    }
}
