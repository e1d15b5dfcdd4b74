//! Volumes and image stacks with their sampling (voxel size in Å).

use ndarray::{Array3, ArrayView2, ArrayViewMut2, Axis};

use crate::PhysicsError;

/// A cubic 3D density map: `[z][y][x]` voxels (x fastest) on a grid of `apix` Å.
///
/// **Invariant:** the box is cubic with an even edge `N`; the origin of the molecule's frame is
/// the voxel with index `N/2` on every axis, so voxel `i` sits at `(i − N/2)·apix` Å.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    data: Array3<f32>,
    apix: f32,
}

impl Volume {
    /// Wraps voxels and their size (Å), checking the box is cubic and even and `apix > 0`.
    pub fn new(data: Array3<f32>, apix: f32) -> Result<Self, PhysicsError> {
        let (nz, ny, nx) = data.dim();
        if nz != ny || ny != nx || nx % 2 != 0 || nx == 0 {
            return Err(PhysicsError::Shape {
                what: "volume",
                got: format!("{nz}×{ny}×{nx}"),
                expected: "a cubic box with an even, non-zero edge".into(),
            });
        }
        check_apix(apix)?;
        Ok(Self {
            data: data.as_standard_layout().into_owned(),
            apix,
        })
    }

    /// An all-zero volume of edge `n` voxels of `apix` Å.
    pub fn zeros(n: usize, apix: f32) -> Result<Self, PhysicsError> {
        Self::new(Array3::zeros((n, n, n)), apix)
    }

    /// Edge length of the box in voxels.
    pub fn box_size(&self) -> usize {
        self.data.dim().0
    }

    /// Voxel size in Å.
    pub fn apix(&self) -> f32 {
        self.apix
    }

    /// The voxels, `[z][y][x]`, in standard (C) layout.
    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }

    /// Mutable voxels; the shape cannot change through this view.
    pub fn data_mut(&mut self) -> &mut Array3<f32> {
        &mut self.data
    }

    /// Gives the voxels back.
    pub fn into_data(self) -> Array3<f32> {
        self.data
    }

    /// A sum of isotropic Gaussian blobs sampled on the voxels of an `n`³ box of `apix` Å:
    /// the test volume of the projector, simulator and trainer tests (smooth, band-limited when
    /// σ is a few voxels, asymmetric when the blobs are).
    pub fn gaussian_blobs(n: usize, apix: f32, blobs: &[Blob]) -> Result<Self, PhysicsError> {
        let c = (n / 2) as f64;
        let data = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let r = [x as f64 - c, y as f64 - c, z as f64 - c];
            blobs
                .iter()
                .map(|b| {
                    let d2: f64 = (0..3).map(|j| (r[j] - b.centre[j]).powi(2)).sum();
                    b.amplitude * (-d2 / (2.0 * b.sigma * b.sigma)).exp()
                })
                .sum::<f64>() as f32
        });
        Self::new(data, apix)
    }
}

/// One blob of [`Volume::gaussian_blobs`]: its centre (voxels, relative to voxel `N/2` on each
/// axis, in x y z order), its peak value and its width σ (voxels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blob {
    /// Centre, voxels from the box centre, x y z.
    pub centre: [f64; 3],
    /// Peak value.
    pub amplitude: f64,
    /// Standard deviation, voxels.
    pub sigma: f64,
}

/// A stack of square images `[n][y][x]` with pixel size `apix` Å.
///
/// **Invariant:** images are square with an even edge; the image centre is pixel `(N/2, N/2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageStack {
    data: Array3<f32>,
    apix: f32,
}

impl ImageStack {
    /// Wraps images and their pixel size (Å), checking they are square and even.
    pub fn new(data: Array3<f32>, apix: f32) -> Result<Self, PhysicsError> {
        let (_, ny, nx) = data.dim();
        if ny != nx || nx % 2 != 0 || nx == 0 {
            return Err(PhysicsError::Shape {
                what: "image stack",
                got: format!("{ny}×{nx} images"),
                expected: "square images with an even, non-zero edge".into(),
            });
        }
        check_apix(apix)?;
        Ok(Self {
            data: data.as_standard_layout().into_owned(),
            apix,
        })
    }

    /// `n` all-zero images of `box_size`² pixels of `apix` Å.
    pub fn zeros(n: usize, box_size: usize, apix: f32) -> Result<Self, PhysicsError> {
        Self::new(Array3::zeros((n, box_size, box_size)), apix)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.data.dim().0
    }

    /// Whether the stack holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Edge of each image in pixels.
    pub fn box_size(&self) -> usize {
        self.data.dim().1
    }

    /// Pixel size in Å.
    pub fn apix(&self) -> f32 {
        self.apix
    }

    /// Image `i`, `[y][x]`.
    pub fn image(&self, i: usize) -> ArrayView2<'_, f32> {
        self.data.index_axis(Axis(0), i)
    }

    /// Mutable image `i`.
    pub fn image_mut(&mut self, i: usize) -> ArrayViewMut2<'_, f32> {
        self.data.index_axis_mut(Axis(0), i)
    }

    /// All pixels, `[n][y][x]`.
    pub fn data(&self) -> &Array3<f32> {
        &self.data
    }

    /// All pixels, mutable.
    pub fn data_mut(&mut self) -> &mut Array3<f32> {
        &mut self.data
    }

    /// Gives the pixels back.
    pub fn into_data(self) -> Array3<f32> {
        self.data
    }
}

fn check_apix(apix: f32) -> Result<(), PhysicsError> {
    if apix.is_finite() && apix > 0.0 {
        Ok(())
    } else {
        Err(PhysicsError::Parameter {
            name: "voxel size (Å)",
            value: f64::from(apix),
            expected: "a finite number above 0",
        })
    }
}
