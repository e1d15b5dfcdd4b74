//! Opening particle sets of every supported kind: STAR (+ MRC stacks), cryoSPARC `.cs`,
//! the HDF5 container, and plain `.mrcs` stacks or `.txt` lists of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::hint::WithHint;
use crate::monitor::Monitor;
use mcg_formats::ImageSource;
use mcg_formats::finite::{FiniteImages, Subset, non_finite_particles};
use mcg_formats::stack_source::{StackImages, particle_set_from_stacks, read_stack_list};
use mcg_formats::star::StarOptions;
use mcg_formats::{ParticleSet, cs, star};
use mcg_h5::H5Particles;

/// The kinds of particle-set files, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RELION STAR (`.star`) with MRC stacks.
    Star,
    /// cryoSPARC `.cs`.
    Cs,
    /// The HDF5 container (`.h5`, `.hdf5`).
    H5,
    /// One MRC stack (`.mrc`, `.mrcs`, `.map`, `.st`).
    Mrc,
    /// A `.txt` list of MRC stacks.
    StackList,
}

/// Options that help locate images and sampling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Locate {
    /// Folder holding the images, when the metadata's image paths do not resolve against the
    /// metadata file's own folder.
    pub data_dir: Option<PathBuf>,
    /// Pixel size in Å, for files that do not record it (a size written in the file wins).
    pub apix: Option<f64>,
}

impl Locate {
    fn star_options(&self) -> StarOptions {
        StarOptions {
            data_dir: self.data_dir.clone(),
            apix: self.apix,
        }
    }
}

/// The kind of `path`, from its extension.
pub fn kind_of(path: &Path) -> Result<Kind> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    Ok(match ext.as_str() {
        "star" => Kind::Star,
        "cs" => Kind::Cs,
        "h5" | "hdf5" => Kind::H5,
        "mrc" | "mrcs" | "map" | "st" => Kind::Mrc,
        "txt" => Kind::StackList,
        _ => bail!(
            "{}: unknown file type {ext:?}: expected .star, .cs, .h5/.hdf5, .mrc/.mrcs or .txt",
            path.display()
        ),
    })
}

/// Reads the metadata of a particle set.
pub fn metadata(path: &Path, locate: &Locate) -> Result<ParticleSet> {
    Ok(match kind_of(path)? {
        Kind::Star => star::read_particles(path, &locate.star_options())?,
        Kind::Cs => cs::read_cs(path, &locate.star_options())?,
        Kind::H5 => H5Particles::open(path)?.particle_set()?,
        Kind::Mrc => particle_set_from_stacks(&[path.to_path_buf()], locate.apix)?,
        Kind::StackList => {
            let stacks = read_stack_list(path)?;
            particle_set_from_stacks(&stacks, locate.apix)?
        }
    })
}

/// Reads the metadata of a particle set and opens its images for batch reading. Reading an
/// image with a non-finite pixel is an error naming the file, the particle and the pixel.
pub fn particles(path: &Path, locate: &Locate) -> Result<(ParticleSet, Box<FiniteImages>)> {
    if kind_of(path)? == Kind::H5 {
        let h5 = H5Particles::open(path)?;
        let set = h5.particle_set()?;
        return Ok((set, Box::new(FiniteImages::new(Box::new(h5), path))));
    }
    let set = metadata(path, locate)?;
    let images = StackImages::open(&set)
        .with_context(|| format!("opening the images of {}", path.display()))
        .with_hint("if the image stacks live in another folder, pass it with --data-dir")?;
    Ok((set, Box::new(FiniteImages::new(Box::new(images), path))))
}

/// Reads every image of the set `path` once and finds those with a non-finite pixel: an error
/// counting them and naming the first (ending with `hint`), or with `skip` the set and images
/// without them. Returns the images to go on with and how many particles were left out.
pub fn without_non_finite(
    path: &Path,
    set: &mut ParticleSet,
    images: Box<FiniteImages>,
    skip: bool,
    hint: &str,
    progress: &dyn Monitor,
) -> Result<(Box<dyn ImageSource>, usize)> {
    let bar = progress.bar(set.len() as u64, "checking pixels");
    let bad = non_finite_particles(images.unchecked(), 512, &mut |k| bar.set_position(k as u64))?;
    bar.finish();
    let Some(&first) = bad.first() else {
        return Ok((images, 0));
    };
    let what = format!(
        "{}: {} of {} particles have a NaN or infinite pixel (the first: particle {})",
        path.display(),
        bad.len(),
        set.len(),
        first + 1
    );
    if !skip {
        return Err(anyhow::anyhow!(what)).with_hint(hint);
    }
    let keep: Vec<usize> = (0..set.len())
        .filter(|i| bad.binary_search(i).is_err())
        .collect();
    ensure!(!keep.is_empty(), "{what}: none is left");
    tracing::warn!("{what}: going on without them (--skip-non-finite)");
    Ok((subset(set, images, keep), bad.len()))
}

/// The particles `keep` (0-based, each below `set.len()`, in that order) of a set and its
/// images: the set's particles and extra columns kept in step with the images.
pub fn subset(
    set: &mut ParticleSet,
    images: Box<dyn ImageSource>,
    keep: Vec<usize>,
) -> Box<dyn ImageSource> {
    set.particles = keep.iter().map(|&i| set.particles[i].clone()).collect();
    for (_, values) in &mut set.extra {
        *values = keep.iter().map(|&i| values[i].clone()).collect();
    }
    Box::new(Subset::new(images, keep))
}
