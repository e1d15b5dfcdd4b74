//! Non-finite pixels: one check for every image source. A NaN or infinite pixel in a particle
//! image turns every loss, map or statistic computed from it into NaN, so reading refuses it
//! ([`FiniteImages`]) naming the file, the particle and the pixel; a command that can go on
//! without such particles finds them all first ([`non_finite_particles`]) and reads the others
//! through a [`Subset`].

use std::path::{Path, PathBuf};

use ndarray::{Array3, ArrayView2, ArrayViewMut3, Axis};

use crate::{FormatError, ImageSource, Result};

/// The first non-finite pixel of `image`: `(y, x, value)`.
pub fn first_non_finite(image: ArrayView2<'_, f32>) -> Option<(usize, usize, f32)> {
    image
        .indexed_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|((y, x), &v)| (y, x, v))
}

/// An image source that refuses to hand out a non-finite pixel: the error names `path` (the
/// particle file), the particle (1-based) and the pixel.
pub struct FiniteImages {
    inner: Box<dyn ImageSource>,
    path: PathBuf,
}

impl FiniteImages {
    /// Wraps `inner`, the images of the particle file `path`.
    pub fn new(inner: Box<dyn ImageSource>, path: &Path) -> Self {
        Self {
            inner,
            path: path.to_path_buf(),
        }
    }

    /// The unchecked source, for a scan that counts the non-finite images.
    pub fn unchecked(&self) -> &dyn ImageSource {
        self.inner.as_ref()
    }
}

impl std::fmt::Debug for FiniteImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FiniteImages")
            .field("path", &self.path)
            .field("len", &self.inner.len())
            .finish_non_exhaustive()
    }
}

impl ImageSource for FiniteImages {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn box_size(&self) -> usize {
        self.inner.box_size()
    }

    fn pixel_size(&self) -> f64 {
        self.inner.pixel_size()
    }

    fn read_batch(&self, indices: &[usize], mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
        self.inner.read_batch(indices, out.view_mut())?;
        for (&i, image) in indices.iter().zip(out.axis_iter(Axis(0))) {
            if let Some((y, x, v)) = first_non_finite(image) {
                return Err(FormatError::invalid(
                    &self.path,
                    format!("particle {}", i + 1),
                    format!(
                        "found {v} at pixel (x {x}, y {y}) of its image, expected finite \
                         numbers (`train` counts such particles; `train` and `convert` \
                         with --skip-non-finite go on without them)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The particles (0-based) of `images` with a non-finite pixel, read `batch` at a time;
/// `progress` is told how many have been read.
pub fn non_finite_particles(
    images: &dyn ImageSource,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<usize>> {
    let (n, b) = (images.len(), images.box_size());
    let batch = batch.max(1);
    let mut found = Vec::new();
    let mut buf = Array3::<f32>::zeros((batch.min(n.max(1)), b, b));
    let mut start = 0;
    while start < n {
        let count = batch.min(n - start);
        let indices: Vec<usize> = (start..start + count).collect();
        let mut view = buf.slice_mut(ndarray::s![..count, .., ..]);
        images.read_batch(&indices, view.view_mut())?;
        for (k, image) in view.axis_iter(Axis(0)).enumerate() {
            if first_non_finite(image).is_some() {
                found.push(start + k);
            }
        }
        start += count;
        progress(start);
    }
    Ok(found)
}

/// The images `keep` (0-based, in that order) of another source, as particles 0, 1, ….
pub struct Subset {
    inner: Box<dyn ImageSource>,
    keep: Vec<usize>,
}

impl Subset {
    /// The images `keep` of `inner`; each must be below `inner.len()`.
    pub fn new(inner: Box<dyn ImageSource>, keep: Vec<usize>) -> Self {
        debug_assert!(keep.iter().all(|&i| i < inner.len()));
        Self { inner, keep }
    }
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("len", &self.keep.len())
            .finish_non_exhaustive()
    }
}

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.keep.len()
    }

    fn box_size(&self) -> usize {
        self.inner.box_size()
    }

    fn pixel_size(&self) -> f64 {
        self.inner.pixel_size()
    }

    fn read_batch(&self, indices: &[usize], out: ArrayViewMut3<'_, f32>) -> Result<()> {
        let mapped = indices
            .iter()
            .map(|&i| {
                self.keep.get(i).copied().ok_or_else(|| {
                    FormatError::invalid(
                        "subset",
                        "particle index",
                        format!("found {i} (0-based), expected below {}", self.keep.len()),
                    )
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        self.inner.read_batch(&mapped, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images i filled with the value i, one pixel of image 2 NaN and of image 4 infinite.
    struct Mem(Array3<f32>);

    impl ImageSource for Mem {
        fn len(&self) -> usize {
            self.0.dim().0
        }
        fn box_size(&self) -> usize {
            self.0.dim().1
        }
        fn pixel_size(&self) -> f64 {
            1.0
        }
        fn read_batch(&self, indices: &[usize], mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
            for (k, &i) in indices.iter().enumerate() {
                out.index_axis_mut(Axis(0), k)
                    .assign(&self.0.index_axis(Axis(0), i));
            }
            Ok(())
        }
    }

    fn images() -> Mem {
        let mut a = Array3::from_shape_fn((6, 3, 3), |(i, _, _)| i as f32);
        a[[2, 1, 2]] = f32::NAN;
        a[[4, 0, 0]] = f32::INFINITY;
        Mem(a)
    }

    #[test]
    fn reading_refuses_a_non_finite_pixel_naming_file_particle_and_pixel() {
        let src = FiniteImages::new(Box::new(images()), Path::new("p.star"));
        let mut out = Array3::zeros((2, 3, 3));
        src.read_batch(&[0, 1], out.view_mut()).unwrap();
        assert_eq!(out[[1, 0, 0]], 1.0);
        let e = src
            .read_batch(&[1, 2], out.view_mut())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.star")
                && e.contains("particle 3")
                && e.contains("(x 2, y 1)")
                && e.contains("NaN"),
            "{e}"
        );
    }

    #[test]
    fn the_scan_finds_every_bad_particle_whatever_the_batch() {
        for batch in [1, 4, 100] {
            let mut seen = 0;
            let found = non_finite_particles(&images(), batch, &mut |n| seen = n).unwrap();
            assert_eq!(found, vec![2, 4], "batch {batch}");
            assert_eq!(seen, 6);
        }
    }

    #[test]
    fn a_subset_reads_the_kept_images_in_order() {
        let src = Subset::new(Box::new(images()), vec![0, 1, 3, 5]);
        assert_eq!(src.len(), 4);
        let mut out = Array3::zeros((2, 3, 3));
        src.read_batch(&[2, 3], out.view_mut()).unwrap();
        assert_eq!((out[[0, 0, 0]], out[[1, 2, 2]]), (3.0, 5.0));
        assert!(src.read_batch(&[4, 0], out.view_mut()).is_err());
    }
}
