//! The particle-set model that STAR, `.cs` and HDF5 files map to.
//!
//! A [`ParticleSet`] is metadata only; pixels are read through an [`ImageSource`], lazily and in
//! batches, so memory follows the batch, not the data set.

use std::path::{Path, PathBuf};

use mcg_physics::{CtfParams, Pose, Shift};
use ndarray::ArrayViewMut3;

use crate::Result;

/// One optics group (RELION ≥ 3.1 `data_optics` row).
#[derive(Debug, Clone, PartialEq)]
pub struct OpticsGroup {
    /// `_rlnOpticsGroup`, the number particles refer to (1-based in RELION files).
    pub id: u32,
    /// `_rlnOpticsGroupName`.
    pub name: String,
    /// Pixel size of the particle images, Å (`_rlnImagePixelSize`).
    pub pixel_size: f64,
    /// Edge of the particle images, pixels (`_rlnImageSize`), when known.
    pub image_size: Option<usize>,
    /// Acceleration voltage, kV.
    pub voltage: f64,
    /// Spherical aberration, mm.
    pub cs: f64,
    /// Amplitude contrast Q0.
    pub amplitude_contrast: f64,
    /// Columns of this group not mapped to a field above, `(label, value)`, kept so that a
    /// conversion loses nothing.
    pub extra: Vec<(String, String)>,
}

impl OpticsGroup {
    /// The one optics group of a set made here (a simulation, a bare stack): RELION's first
    /// group (`id` 1, `opticsGroup1`) with the microscope of `ctf` (voltage, Cs, amplitude
    /// contrast), pixels of `pixel_size` Å, and no extra columns.
    pub fn single(pixel_size: f64, image_size: Option<usize>, ctf: &CtfParams) -> Self {
        Self::numbered(
            1,
            pixel_size,
            image_size,
            ctf.voltage,
            ctf.cs,
            ctf.amplitude_contrast,
        )
    }

    /// Optics group number `id`, named as RELION names them (`opticsGroup<id>`): pixels of
    /// `pixel_size` Å, images of `image_size` pixels, a microscope at `voltage` kV with `cs` mm
    /// spherical aberration and amplitude contrast `amplitude_contrast`; no extra columns.
    pub fn numbered(
        id: u32,
        pixel_size: f64,
        image_size: Option<usize>,
        voltage: f64,
        cs: f64,
        amplitude_contrast: f64,
    ) -> Self {
        Self {
            id,
            name: format!("opticsGroup{id}"),
            pixel_size,
            image_size,
            voltage,
            cs,
            amplitude_contrast,
            extra: Vec::new(),
        }
    }
}

/// Where a particle's pixels are: a stack file and a 0-based index in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The stack path as written in the metadata file (often relative).
    pub path: PathBuf,
    /// 0-based index of the image in the stack (STAR's `000001@` is index 0).
    pub index: usize,
}

/// One particle's metadata, complete: its CTF already carries the optics group's voltage, Cs
/// and amplitude contrast.
#[derive(Debug, Clone, PartialEq)]
pub struct Particle {
    /// Its image, when the file names one.
    pub image: Option<ImageRef>,
    /// Index into [`ParticleSet::optics`] (not the RELION number).
    pub optics_group: usize,
    /// Orientation, when known.
    pub pose: Option<Pose>,
    /// Origin offset in Å (zero when absent).
    pub shift: Shift,
    /// Full CTF of this particle.
    pub ctf: CtfParams,
    /// `_rlnClassNumber`, when present.
    pub class: Option<u32>,
}

/// A particle table with its optics groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParticleSet {
    /// Optics groups; particles point into this list.
    pub optics: Vec<OpticsGroup>,
    /// The particles, in file order.
    pub particles: Vec<Particle>,
    /// Per-particle columns not mapped to a field of [`Particle`], `(label, values)` with one
    /// value per particle, kept as text so that conversions lose nothing.
    pub extra: Vec<(String, Vec<String>)>,
    /// Folder that relative image paths are resolved against (the metadata file's folder, or a
    /// data folder the user gave).
    pub base_dir: PathBuf,
}

impl ParticleSet {
    /// Number of particles.
    pub fn len(&self) -> usize {
        self.particles.len()
    }

    /// Whether the set holds no particle.
    pub fn is_empty(&self) -> bool {
        self.particles.is_empty()
    }

    /// The optics group of particle `i`.
    pub fn optics_of(&self, i: usize) -> &OpticsGroup {
        &self.optics[self.particles[i].optics_group]
    }

    /// The file an image reference points at, resolved against [`Self::base_dir`].
    pub fn resolve(&self, image: &ImageRef) -> PathBuf {
        resolve_path(&self.base_dir, &image.path)
    }

    /// The values of an extra column, if present.
    pub fn extra_column(&self, label: &str) -> Option<&[String]> {
        self.extra
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.as_slice())
    }
}

/// `path` if absolute, else `base/path`.
pub fn resolve_path(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Random batch access to particle images, whatever holds them (MRC stacks, HDF5).
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// Whether there is no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Edge of each (square) image in pixels.
    fn box_size(&self) -> usize;

    /// Pixel size in Å.
    fn pixel_size(&self) -> f64;

    /// Reads the images `indices` (0-based particle numbers) into `out`, `[indices.len()][N][N]`.
    fn read_batch(&self, indices: &[usize], out: ArrayViewMut3<'_, f32>) -> Result<()>;
}
