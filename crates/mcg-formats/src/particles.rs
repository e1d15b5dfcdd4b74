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

impl ParticleSet {
    /// The one check of a particle set's values, whatever the file it came from (every reader
    /// calls it, so a STAR, `.cs` and HDF5 file with the same content pass or fail alike):
    /// optics groups with a finite pixel size above 0, a voltage above 0, finite Cs and an
    /// amplitude contrast in [0, 1]; particles in an existing optics group with finite
    /// defocus, astigmatism angle, phase shift, B-factor, scale, shift and angles; extra columns
    /// of one value per particle. Errors name `path`, the group or particle (1-based) and the
    /// field.
    pub fn validate(&self, path: &Path) -> crate::Result<()> {
        let bad =
            |what: String, problem: String| Err(crate::FormatError::invalid(path, what, problem));
        for g in &self.optics {
            let name = |field: &str| format!("optics group {}: {field}", g.name);
            if !(g.pixel_size.is_finite() && g.pixel_size > 0.0) {
                return bad(
                    name("pixel size"),
                    format!("found {} Å, expected a finite number above 0", g.pixel_size),
                );
            }
            if !(g.voltage.is_finite() && g.voltage > 0.0) {
                return bad(
                    name("voltage"),
                    format!("found {} kV, expected a finite number above 0", g.voltage),
                );
            }
            if !g.cs.is_finite() {
                return bad(
                    name("spherical aberration"),
                    format!("found {} mm, expected a finite number", g.cs),
                );
            }
            if !(0.0..=1.0).contains(&g.amplitude_contrast) {
                return bad(
                    name("amplitude contrast"),
                    format!(
                        "found {}, expected a fraction in [0, 1]",
                        g.amplitude_contrast
                    ),
                );
            }
            if g.image_size == Some(0) {
                return bad(
                    name("image size"),
                    "found 0 pixels, expected at least 1".into(),
                );
            }
        }
        for (i, p) in self.particles.iter().enumerate() {
            let what = |field: &str| format!("particle {}: {field}", i + 1);
            if p.optics_group >= self.optics.len() {
                return bad(
                    what("optics group"),
                    format!(
                        "found group index {}, expected one of the {} groups",
                        p.optics_group,
                        self.optics.len()
                    ),
                );
            }
            let c = &p.ctf;
            let mut values = vec![
                ("defocus U", c.defocus_u),
                ("defocus V", c.defocus_v),
                ("defocus angle", c.defocus_angle),
                ("phase shift", c.phase_shift),
                ("B-factor", c.bfactor),
                ("CTF scale", c.scale),
                ("voltage", c.voltage),
                ("spherical aberration", c.cs),
                ("amplitude contrast", c.amplitude_contrast),
                ("shift x", p.shift.x),
                ("shift y", p.shift.y),
            ];
            if let Some(pose) = &p.pose {
                values.extend([("rot", pose.rot), ("tilt", pose.tilt), ("psi", pose.psi)]);
            }
            if let Some((field, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
                return bad(what(field), format!("found {v}, expected a finite number"));
            }
        }
        for (label, values) in &self.extra {
            if values.len() != self.particles.len() {
                return bad(
                    format!("column {label}"),
                    format!(
                        "found {} values, expected one per particle ({})",
                        values.len(),
                        self.particles.len()
                    ),
                );
            }
        }
        Ok(())
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

/// Images held in memory, `[K][N][N]`, at a pixel size: an [`ImageSource`] for images a
/// program made itself (and for tests).
#[derive(Debug, Clone)]
pub struct InMemory {
    images: ndarray::Array3<f32>,
    pixel_size: f64,
}

impl InMemory {
    /// `images` (square) of `pixel_size` Å.
    pub fn new(images: ndarray::Array3<f32>, pixel_size: f64) -> Self {
        Self { images, pixel_size }
    }
}

impl ImageSource for InMemory {
    fn len(&self) -> usize {
        self.images.dim().0
    }

    fn box_size(&self) -> usize {
        self.images.dim().1
    }

    fn pixel_size(&self) -> f64 {
        self.pixel_size
    }

    fn read_batch(&self, indices: &[usize], mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
        for (i, &j) in indices.iter().enumerate() {
            out.index_axis_mut(ndarray::Axis(0), i)
                .assign(&self.images.index_axis(ndarray::Axis(0), j));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ParticleSet {
        let ctf = CtfParams::default();
        ParticleSet {
            optics: vec![OpticsGroup::single(1.5, Some(64), &ctf)],
            particles: (0..3)
                .map(|_| Particle {
                    image: None,
                    optics_group: 0,
                    pose: Some(Pose::new(10.0, 20.0, 30.0)),
                    shift: Shift::default(),
                    ctf,
                    class: None,
                })
                .collect(),
            extra: vec![("_mcgBeta".into(), vec!["1".into(), "2".into(), "3".into()])],
            base_dir: PathBuf::new(),
        }
    }

    fn error(set: &ParticleSet) -> String {
        set.validate(Path::new("p.star")).unwrap_err().to_string()
    }

    #[test]
    fn a_sound_set_passes_and_each_bad_value_is_named() {
        set().validate(Path::new("p.star")).unwrap();
        let mut s = set();
        s.particles[1].ctf.defocus_u = f64::NAN;
        let e = error(&s);
        assert!(
            e.contains("p.star") && e.contains("particle 2: defocus U") && e.contains("NaN"),
            "{e}"
        );
        let mut s = set();
        s.optics[0].pixel_size = 0.0;
        assert!(error(&s).contains("pixel size"), "{}", error(&s));
        let mut s = set();
        s.particles[2].pose = Some(Pose::new(0.0, f64::INFINITY, 0.0));
        assert!(error(&s).contains("particle 3: tilt"), "{}", error(&s));
        let mut s = set();
        s.particles[0].optics_group = 4;
        assert!(error(&s).contains("optics group"), "{}", error(&s));
        let mut s = set();
        s.extra[0].1.pop();
        assert!(error(&s).contains("_mcgBeta"), "{}", error(&s));
        let mut s = set();
        s.optics[0].amplitude_contrast = 1.5;
        assert!(error(&s).contains("amplitude contrast"), "{}", error(&s));
    }
}
