//! Particle images held in MRC stacks: an [`ImageSource`] over the stacks a [`ParticleSet`]
//! references, cryoDRGN's `.txt` stack lists, and metadata-only sets for bare stacks.
//!
//! **Invariant:** [`StackImages::open`] validates every reference (stack readable, index inside,
//! one image size for all) so that reads during training fail only on I/O, never on metadata.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use mcg_physics::{CtfParams, Shift};
use ndarray::{ArrayViewMut3, Axis};

use crate::mrc::{self, MrcStack};
use crate::particles::resolve_path;
use crate::{FormatError, ImageRef, ImageSource, OpticsGroup, Particle, ParticleSet, Result};

/// The images of a [`ParticleSet`] whose particles reference MRC stacks, read on demand.
///
/// Each distinct stack is checked once at open time (its header only) and opened on first read;
/// at most [`StackImages::MAX_OPEN_STACKS`] stay open at once (the oldest is closed first), so
/// a set spread over thousands of per-micrograph stacks stays within the process's file limit.
/// Below that number each stack is opened exactly once.
#[derive(Debug)]
pub struct StackImages {
    /// The distinct stacks, resolved paths, in order of first reference.
    stacks: Vec<StackInfo>,
    /// Particle i's image: `(stack number, 0-based index in it)`.
    images: Vec<(usize, usize)>,
    box_size: usize,
    pixel_size: f64,
    /// Names the set in errors that concern no single stack.
    base_dir: PathBuf,
    handles: Mutex<HandleCache>,
}

impl StackImages {
    /// Most stacks held open at once.
    pub const MAX_OPEN_STACKS: usize = 128;

    /// Checks and indexes the images of `set`: every particle must reference an image, every
    /// referenced index must lie inside its stack, and all stacks must hold square images of one
    /// size. The pixel size is that of the first particle's optics group.
    pub fn open(set: &ParticleSet) -> Result<Self> {
        let Some(first) = set.particles.first() else {
            return Err(FormatError::invalid(
                &set.base_dir,
                "particles",
                "found an empty particle set, expected at least one particle with an image",
            ));
        };
        let optics = optics_group(set, 0, first)?;
        let pixel_size = optics.pixel_size;
        if !(pixel_size.is_finite() && pixel_size > 0.0) {
            return Err(FormatError::invalid(
                &set.base_dir,
                format!("optics group {} pixel size", optics.name),
                format!("found {pixel_size} Å, expected a finite number above 0"),
            ));
        }
        let mut stacks: Vec<StackInfo> = Vec::new();
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let mut images = Vec::with_capacity(set.len());
        for (i, particle) in set.particles.iter().enumerate() {
            let image = particle.image.as_ref().ok_or_else(|| {
                FormatError::invalid(
                    &set.base_dir,
                    format!("particle {}", i + 1),
                    "found no image reference, expected one (`_rlnImageName`)",
                )
            })?;
            let path = set.resolve(image);
            let k = match by_path.get(&path) {
                Some(&k) => k,
                None => {
                    let info = StackInfo::read(path.clone())?;
                    if let Some(first) = stacks.first() {
                        check_same_shape(first, &info)?;
                    } else {
                        check_square(&info)?;
                    }
                    stacks.push(info);
                    by_path.insert(path, stacks.len() - 1);
                    stacks.len() - 1
                }
            };
            let stack = &stacks[k];
            let declared = set.optics_of(i).image_size;
            if let Some(size) = declared
                && (size, size) != stack.shape
            {
                return Err(FormatError::invalid(
                    &stack.path,
                    format!("optics group {} image size", set.optics_of(i).name),
                    format!(
                        "the particle table declares {size}×{size}-pixel images \
                         (_rlnImageSize, or .cs blob/shape), but the stack holds {}×{} \
                         (particle {})",
                        stack.shape.1,
                        stack.shape.0,
                        i + 1
                    ),
                ));
            }
            if image.index >= stack.len {
                return Err(FormatError::invalid(
                    &stack.path,
                    star_reference(image),
                    format!(
                        "image {} is past the end of {} ({} images) (particle {})",
                        image.index as u128 + 1,
                        stack.path.display(),
                        stack.len,
                        i + 1
                    ),
                ));
            }
            images.push((k, image.index));
        }
        let box_size = stacks[0].shape.1;
        Ok(Self {
            handles: Mutex::new(HandleCache::new(stacks.len())),
            stacks,
            images,
            box_size,
            pixel_size,
            base_dir: set.base_dir.clone(),
        })
    }

    /// Number of distinct stacks the images come from.
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }
}

impl ImageSource for StackImages {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn box_size(&self) -> usize {
        self.box_size
    }

    fn pixel_size(&self) -> f64 {
        self.pixel_size
    }

    fn read_batch(&self, indices: &[usize], mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
        let n = self.box_size;
        if out.dim() != (indices.len(), n, n) {
            return Err(FormatError::invalid(
                &self.base_dir,
                "output shape",
                format!(
                    "found an output array of shape {:?}, expected ({}, {n}, {n})",
                    out.dim(),
                    indices.len()
                ),
            ));
        }
        let mut current: Option<(usize, Arc<MrcStack>)> = None;
        for (&i, image) in indices.iter().zip(out.axis_iter_mut(Axis(0))) {
            let &(k, index) = self.images.get(i).ok_or_else(|| {
                FormatError::invalid(
                    &self.base_dir,
                    "particle index",
                    format!(
                        "found {i} (0-based), expected below {} particles",
                        self.images.len()
                    ),
                )
            })?;
            let stack = match &current {
                Some((open, stack)) if *open == k => Arc::clone(stack),
                _ => {
                    let stack = self.handle(k)?;
                    current = Some((k, Arc::clone(&stack)));
                    stack
                }
            };
            stack.read_into(index, image)?;
        }
        Ok(())
    }
}

/// The stack paths listed in a cryoDRGN `.txt` file, one per line, relative paths resolved
/// against the file's folder. Blank lines and lines starting with `#` are skipped.
pub fn read_stack_list(path: &Path) -> Result<Vec<PathBuf>> {
    let text = mcg_fsio::budget::read_whole_text(path)?;
    let folder = path.parent().unwrap_or(Path::new(""));
    let stacks: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| resolve_path(folder, Path::new(line)))
        .collect();
    if stacks.is_empty() {
        return Err(FormatError::invalid(
            path,
            "stack list",
            "found no stack path, expected one per line",
        ));
    }
    Ok(stacks)
}

/// A metadata-only particle set for bare stacks (`.mrcs` files or a `.txt` list): one particle
/// per image, in stack order, all in one optics group, with no pose and no shift.
///
/// The pixel size is `apix` (Å) when given, else the first stack's header voxel size (an error
/// when it has none). No CTF is known: every particle gets [`CtfParams::default`]'s voltage,
/// Cs and amplitude contrast (300 kV, 2.7 mm, 0.1) and **zero defocus**, which callers must read
/// as "no CTF information", not as an in-focus image. Image paths are kept as given and the
/// set's `base_dir` is empty, so relative paths resolve against the working folder.
pub fn particle_set_from_stacks(paths: &[PathBuf], apix: Option<f64>) -> Result<ParticleSet> {
    let Some(first_path) = paths.first() else {
        return Err(FormatError::invalid(
            "",
            "stacks",
            "found no stack path, expected at least one",
        ));
    };
    let headers = paths
        .iter()
        .map(|p| mrc::read_header(p).map(|h| (p, h)))
        .collect::<Result<Vec<_>>>()?;
    let first = &headers[0].1;
    for (path, header) in &headers[1..] {
        if (header.ny, header.nx) != (first.ny, first.nx) {
            return Err(FormatError::invalid(
                *path,
                "NY×NX",
                format!(
                    "found {}×{} images, expected {}×{} like {}",
                    header.ny,
                    header.nx,
                    first.ny,
                    first.nx,
                    first_path.display()
                ),
            ));
        }
    }
    let pixel_size = match apix {
        Some(apix) if apix.is_finite() && apix > 0.0 => apix,
        Some(apix) => {
            return Err(FormatError::invalid(
                first_path,
                "pixel size",
                format!("found {apix} Å given, expected a finite number above 0"),
            ));
        }
        None => {
            let apix = first.voxel_size().ok_or_else(|| {
                FormatError::invalid(
                    first_path,
                    "CELLA/MX",
                    format!(
                        "found cell {} Å over MX {}, expected a positive pixel size; give one",
                        first.cell[0], first.mx
                    ),
                )
            })?;
            for (path, header) in &headers[1..] {
                if header.voxel_size() != Some(apix) {
                    tracing::warn!(
                        path = %path.display(),
                        found = ?header.voxel_size(),
                        used = apix,
                        "stack headers disagree on the pixel size; using the first one's"
                    );
                }
            }
            apix
        }
    };
    let defaults = CtfParams::default();
    let optics = OpticsGroup::single(
        pixel_size,
        (first.nx == first.ny).then_some(first.shape().2),
        &defaults,
    );
    let ctf = CtfParams {
        defocus_u: 0.0,
        defocus_v: 0.0,
        defocus_angle: 0.0,
        ..defaults
    };
    let particles = headers
        .iter()
        .flat_map(|(path, header)| {
            (0..header.shape().0).map(move |index| Particle {
                image: Some(ImageRef {
                    path: (*path).clone(),
                    index,
                }),
                optics_group: 0,
                pose: None,
                shift: Shift::default(),
                ctf,
                class: None,
            })
        })
        .collect();
    Ok(ParticleSet {
        optics: vec![optics],
        particles,
        extra: Vec::new(),
        base_dir: PathBuf::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// What open time learned about one stack.
#[derive(Debug)]
struct StackInfo {
    path: PathBuf,
    len: usize,
    /// `(NY, NX)`.
    shape: (usize, usize),
}

impl StackInfo {
    fn read(path: PathBuf) -> Result<Self> {
        let header = mrc::read_header(&path)?;
        let (len, ny, nx) = header.shape();
        Ok(Self {
            path,
            len,
            shape: (ny, nx),
        })
    }
}

/// Open stacks, oldest first in `order`; `open[k]` is stack k's handle when open.
#[derive(Debug)]
struct HandleCache {
    open: Vec<Option<Arc<MrcStack>>>,
    order: VecDeque<usize>,
}

impl HandleCache {
    fn new(stacks: usize) -> Self {
        Self {
            open: vec![None; stacks],
            order: VecDeque::new(),
        }
    }
}

impl StackImages {
    /// Stack k, opened now if it is not open, closing the oldest open one beyond the limit.
    /// Readers hold an `Arc`, so closing here never pulls a file from under a read.
    fn handle(&self, k: usize) -> Result<Arc<MrcStack>> {
        // The cache holds no invariant a panicking reader could break: recover it.
        let mut cache = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stack) = &cache.open[k] {
            return Ok(Arc::clone(stack));
        }
        let info = &self.stacks[k];
        let stack = MrcStack::open(&info.path)?;
        if stack.len() != info.len || stack.image_shape() != info.shape {
            return Err(FormatError::invalid(
                &info.path,
                "NZ×NY×NX",
                format!(
                    "found {}×{:?}, expected {}×{:?} as when the particle set was opened \
                     (the file changed)",
                    stack.len(),
                    stack.image_shape(),
                    info.len,
                    info.shape
                ),
            ));
        }
        let stack = Arc::new(stack);
        cache.open[k] = Some(Arc::clone(&stack));
        cache.order.push_back(k);
        while cache.order.len() > Self::MAX_OPEN_STACKS {
            if let Some(oldest) = cache.order.pop_front() {
                cache.open[oldest] = None;
            }
        }
        Ok(stack)
    }
}

fn optics_group<'a>(
    set: &'a ParticleSet,
    i: usize,
    particle: &Particle,
) -> Result<&'a OpticsGroup> {
    set.optics.get(particle.optics_group).ok_or_else(|| {
        FormatError::invalid(
            &set.base_dir,
            format!("particle {} optics group", i + 1),
            format!(
                "found group index {}, expected below {} groups",
                particle.optics_group,
                set.optics.len()
            ),
        )
    })
}

/// The reference as a STAR file writes it: `000012@stack.mrcs`, 1-based.
fn star_reference(image: &ImageRef) -> String {
    format!("{:06}@{}", image.index as u128 + 1, image.path.display())
}

fn check_square(info: &StackInfo) -> Result<()> {
    let (ny, nx) = info.shape;
    if ny == nx {
        Ok(())
    } else {
        Err(FormatError::invalid(
            &info.path,
            "NY×NX",
            format!("found {ny}×{nx} images, expected square particle images"),
        ))
    }
}

fn check_same_shape(first: &StackInfo, other: &StackInfo) -> Result<()> {
    if other.shape == first.shape {
        Ok(())
    } else {
        Err(FormatError::invalid(
            &other.path,
            "NY×NX",
            format!(
                "found {}×{} images, expected {}×{} like {}",
                other.shape.0,
                other.shape.1,
                first.shape.0,
                first.shape.1,
                first.path.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mrc::MrcStackWriter;
    use ndarray::{Array3, s};

    /// Writes `n` images of `size`² pixels whose value encodes (stack, image, pixel).
    fn write_stack(path: &Path, tag: usize, n: usize, size: usize) -> Array3<f32> {
        let data = Array3::from_shape_fn((n, size, size), |(i, y, x)| {
            (tag * 10_000 + i * 100 + y * size + x) as f32
        });
        let mut w = MrcStackWriter::create(path, size, size, 2.0).unwrap();
        w.append(data.view()).unwrap();
        w.finish().unwrap();
        data
    }

    fn set_of(base: &Path, refs: &[(&str, usize)], apix: f64) -> ParticleSet {
        let optics = vec![OpticsGroup {
            id: 1,
            name: "g".into(),
            pixel_size: apix,
            image_size: None,
            voltage: 300.0,
            cs: 2.7,
            amplitude_contrast: 0.1,
            extra: Vec::new(),
        }];
        let particles = refs
            .iter()
            .map(|&(path, index)| Particle {
                image: Some(ImageRef {
                    path: path.into(),
                    index,
                }),
                optics_group: 0,
                pose: None,
                shift: Shift::default(),
                ctf: CtfParams::default(),
                class: None,
            })
            .collect();
        ParticleSet {
            optics,
            particles,
            extra: Vec::new(),
            base_dir: base.to_path_buf(),
        }
    }

    #[test]
    fn reads_particles_across_stacks_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_stack(&dir.path().join("a.mrcs"), 1, 4, 6);
        let b = write_stack(&dir.path().join("b.mrcs"), 2, 3, 6);
        let set = set_of(
            dir.path(),
            &[("a.mrcs", 3), ("b.mrcs", 0), ("a.mrcs", 0), ("b.mrcs", 2)],
            1.25,
        );
        let src = StackImages::open(&set).unwrap();
        assert_eq!((src.len(), src.box_size(), src.pixel_size()), (4, 6, 1.25));
        assert_eq!(src.stack_count(), 2);
        let mut out = Array3::zeros((3, 6, 6));
        src.read_batch(&[3, 0, 2], out.view_mut()).unwrap();
        assert_eq!(out.slice(s![0, .., ..]), b.slice(s![2, .., ..]));
        assert_eq!(out.slice(s![1, .., ..]), a.slice(s![3, .., ..]));
        assert_eq!(out.slice(s![2, .., ..]), a.slice(s![0, .., ..]));
        let err = src
            .read_batch(&[4], out.slice_mut(s![..1, .., ..]))
            .unwrap_err();
        assert!(err.to_string().contains("particle index"), "{err}");
        let err = src.read_batch(&[0], out.view_mut()).unwrap_err();
        assert!(err.to_string().contains("output shape"), "{err}");
    }

    #[test]
    fn index_past_the_end_names_the_star_reference() {
        let dir = tempfile::tempdir().unwrap();
        write_stack(&dir.path().join("foo.mrcs"), 0, 10, 4);
        let set = set_of(dir.path(), &[("foo.mrcs", 0), ("foo.mrcs", 11)], 1.0);
        let err = StackImages::open(&set).unwrap_err().to_string();
        assert!(
            err.contains("000012@foo.mrcs")
                && err.contains("image 12 is past the end")
                && err.contains("(10 images)")
                && err.contains("particle 2"),
            "{err}"
        );
    }

    #[test]
    fn stacks_must_share_one_square_size() {
        let dir = tempfile::tempdir().unwrap();
        write_stack(&dir.path().join("a.mrcs"), 0, 2, 4);
        write_stack(&dir.path().join("b.mrcs"), 0, 2, 6);
        let set = set_of(dir.path(), &[("a.mrcs", 0), ("b.mrcs", 0)], 1.0);
        let err = StackImages::open(&set).unwrap_err().to_string();
        assert!(
            err.contains("b.mrcs") && err.contains("6×6") && err.contains("4×4"),
            "{err}"
        );
        let mut w = MrcStackWriter::create(&dir.path().join("r.mrcs"), 4, 6, 1.0).unwrap();
        w.append(Array3::zeros((1, 4, 6)).view()).unwrap();
        w.finish().unwrap();
        let set = set_of(dir.path(), &[("r.mrcs", 0)], 1.0);
        let err = StackImages::open(&set).unwrap_err().to_string();
        assert!(err.contains("square"), "{err}");
    }

    #[test]
    fn bad_sets_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        write_stack(&dir.path().join("a.mrcs"), 0, 2, 4);
        let empty = set_of(dir.path(), &[], 1.0);
        assert!(StackImages::open(&empty).is_err());
        let mut no_image = set_of(dir.path(), &[("a.mrcs", 0), ("a.mrcs", 1)], 1.0);
        no_image.particles[1].image = None;
        let err = StackImages::open(&no_image).unwrap_err().to_string();
        assert!(err.contains("particle 2"), "{err}");
        let mut bad_group = set_of(dir.path(), &[("a.mrcs", 0)], 1.0);
        bad_group.particles[0].optics_group = 3;
        assert!(StackImages::open(&bad_group).is_err());
        let zero_apix = set_of(dir.path(), &[("a.mrcs", 0)], 0.0);
        assert!(StackImages::open(&zero_apix).is_err());
        let missing = set_of(dir.path(), &[("nope.mrcs", 0)], 1.0);
        let err = StackImages::open(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.mrcs"), "{err}");
    }

    #[test]
    fn more_stacks_than_the_open_limit_read_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let count = StackImages::MAX_OPEN_STACKS + 5;
        let names: Vec<String> = (0..count).map(|k| format!("s{k}.mrcs")).collect();
        let stacks: Vec<Array3<f32>> = names
            .iter()
            .enumerate()
            .map(|(k, name)| write_stack(&dir.path().join(name), k, 2, 2))
            .collect();
        let refs: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let src = StackImages::open(&set_of(dir.path(), &refs, 1.0)).unwrap();
        // Two passes: the second reopens the stacks the first closed.
        for _ in 0..2 {
            let indices: Vec<usize> = (0..count).collect();
            let mut out = Array3::zeros((count, 2, 2));
            src.read_batch(&indices, out.view_mut()).unwrap();
            for (k, stack) in stacks.iter().enumerate() {
                assert_eq!(
                    out.slice(s![k, .., ..]),
                    stack.slice(s![1, .., ..]),
                    "stack {k}"
                );
            }
        }
        let cache = src.handles.lock().unwrap();
        let open = cache.open.iter().filter(|h| h.is_some()).count();
        assert_eq!(open, StackImages::MAX_OPEN_STACKS);
    }

    #[test]
    fn stack_lists_and_bare_stack_sets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let a = write_stack(&dir.path().join("sub/a.mrcs"), 1, 3, 4);
        let b = write_stack(&dir.path().join("b.mrcs"), 2, 2, 4);
        let list = dir.path().join("sub/list.txt");
        let b_abs = dir.path().join("b.mrcs");
        std::fs::write(
            &list,
            format!("# stacks\na.mrcs\n\n  {}  \n", b_abs.display()),
        )
        .unwrap();
        let paths = read_stack_list(&list).unwrap();
        assert_eq!(paths, vec![dir.path().join("sub/a.mrcs"), b_abs]);
        let set = particle_set_from_stacks(&paths, None).unwrap();
        assert_eq!(set.len(), 5);
        assert_eq!(set.optics.len(), 1);
        assert_eq!(set.optics[0].pixel_size, 2.0);
        assert_eq!(set.optics[0].image_size, Some(4));
        assert_eq!(set.particles[4].image.as_ref().unwrap().index, 1);
        let ctf = set.particles[0].ctf;
        assert_eq!(
            (ctf.defocus_u, ctf.defocus_v, ctf.voltage, ctf.cs),
            (0.0, 0.0, 300.0, 2.7)
        );
        let src = StackImages::open(&set).unwrap();
        let mut out = Array3::zeros((2, 4, 4));
        src.read_batch(&[4, 2], out.view_mut()).unwrap();
        assert_eq!(out.slice(s![0, .., ..]), b.slice(s![1, .., ..]));
        assert_eq!(out.slice(s![1, .., ..]), a.slice(s![2, .., ..]));
        let set = particle_set_from_stacks(&paths, Some(3.5)).unwrap();
        assert_eq!(set.optics[0].pixel_size, 3.5);
        assert!(particle_set_from_stacks(&paths, Some(-1.0)).is_err());
        assert!(particle_set_from_stacks(&[], None).is_err());
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        let err = read_stack_list(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.txt"), "{err}");
    }

    #[test]
    fn source_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<StackImages>();
    }
}
