//! Reading a particle file: [`H5Particles`] validates the layout on opening, rebuilds the
//! [`ParticleSet`], and serves the images in random batches.

use std::path::{Path, PathBuf};

use hdf5::types::{FloatSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group, H5Type};
use mcg_formats::{FormatError, ImageRef, ImageSource, OpticsGroup, Particle, ParticleSet};
use mcg_physics::{Pose, Volume};
use ndarray::{Array3, ArrayViewMut3, Axis, s};

use crate::error::{Context, H5Error, Result};
use crate::layout::*;

/// An open particle file: its metadata on demand and its images as an [`ImageSource`].
///
/// Cheap to share between threads (`Send + Sync`). HDF5 serialises all its calls behind one
/// global lock; the images of files this crate writes are read around that lock, with plain
/// positioned reads of the contiguous `/images` block, so concurrent batches run in parallel.
#[derive(Debug)]
pub struct H5Particles {
    path: PathBuf,
    /// Kept open for the metadata readers.
    file: File,
    images: Dataset,
    count: usize,
    box_size: usize,
    pixel_size: f64,
    /// The direct path to the pixels, when `/images` is one contiguous block of little-endian
    /// f32 (always so in files this crate writes).
    raw: Option<RawImages>,
}

/// The image references of the particle table the file was written from (its provenance):
/// `images[i]` is where particle `i`'s pixels were before they were copied into `/images`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImages {
    /// The folder relative paths in `images` were resolved against.
    pub base_dir: PathBuf,
    /// One entry per particle; `None` where the source table named no image.
    pub images: Vec<Option<ImageRef>>,
}

impl H5Particles {
    /// Opens `path` and checks that it is a multicryogan particle file this version can read:
    /// the root attributes, the shape and type of `/images`, and that every required column of
    /// `/particles` and `/optics` exists with the right length.
    pub fn open(path: &Path) -> Result<Self> {
        check_signature(path)?;
        let file = File::open(path).at(path, "/", "open as an HDF5 file")?;
        let format = read_attr_str(path, &file, "/", ATTR_FORMAT)?.ok_or_else(|| {
            H5Error::invalid(
                path,
                attr_object("/", ATTR_FORMAT),
                format!("missing: not a multicryogan particle file (expected {FORMAT:?})"),
            )
        })?;
        if format != FORMAT {
            return Err(H5Error::invalid(
                path,
                attr_object("/", ATTR_FORMAT),
                format!("is {format:?}, expected {FORMAT:?}"),
            ));
        }
        let version: u32 = required_attr(path, &file, ATTR_FORMAT_VERSION)?;
        if version != FORMAT_VERSION {
            return Err(H5Error::invalid(
                path,
                attr_object("/", ATTR_FORMAT_VERSION),
                format!("is {version}, this reader knows version {FORMAT_VERSION}"),
            ));
        }
        let box_size = required_attr::<u64>(path, &file, ATTR_BOX_SIZE)? as usize;
        let count = required_attr::<u64>(path, &file, ATTR_COUNT)? as usize;
        let pixel_size: f64 = required_attr(path, &file, ATTR_PIXEL_SIZE)?;
        check_count_fits(path, count)?;
        if !(pixel_size.is_finite() && pixel_size > 0.0) {
            return Err(H5Error::invalid(
                path,
                attr_object("/", ATTR_PIXEL_SIZE),
                format!("is {pixel_size} Å, expected a finite number above 0"),
            ));
        }

        let images = open_dataset(path, &file, "/", IMAGES)?;
        let shape = images.shape();
        if shape != [count, box_size, box_size] {
            return Err(H5Error::invalid(
                path,
                "/images",
                format!(
                    "has shape {shape:?}, expected [{count}, {box_size}, {box_size}] (root \
                     attributes count and box_size)"
                ),
            ));
        }
        let dtype = images.dtype().at(path, "/images", "read type")?;
        let descriptor = dtype.to_descriptor().at(path, "/images", "read type")?;
        if descriptor != TypeDescriptor::Float(FloatSize::U4) {
            return Err(H5Error::invalid(
                path,
                "/images",
                format!("has type {descriptor}, expected float32"),
            ));
        }
        let raw = RawImages::open(path, &images, count * box_size * box_size, &dtype)?;

        let reader = Self {
            path: path.to_path_buf(),
            file,
            images,
            count,
            box_size,
            pixel_size,
            raw,
        };
        reader.check_tables()?;
        Ok(reader)
    }

    /// The file's path, as given to [`open`](Self::open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The particle table. Particle `i`'s image is `/images[i]` of this file, so its
    /// [`ImageRef`] is `{ path: <this file's name>, index: i }` with [`ParticleSet::base_dir`]
    /// the file's folder; the references of the table the file was written from are in
    /// [`source_images`](Self::source_images). Everything else is as written.
    pub fn particle_set(&self) -> Result<ParticleSet> {
        let p = &self.path;
        let n = self.count;
        let g = open_group(p, &self.file, "/", PARTICLES)?;
        const OWNER: &str = "/particles";
        let optional = optional_groups(p, &g, OWNER, &[POSE, CLASS, SOURCE_IMAGE])?;

        let optics_group: Vec<u32> = column(p, &g, OWNER, PARTICLE_OPTICS_GROUP, n)?;
        let mut f64_cols = Vec::with_capacity(PARTICLE_F64.len());
        for (name, _) in PARTICLE_F64 {
            f64_cols.push(column::<f64>(p, &g, OWNER, name, n)?);
        }
        let pose = if optional.contains(&POSE) {
            let mut cols = Vec::with_capacity(3);
            for name in POSE_COLUMNS {
                cols.push(column::<f64>(p, &g, OWNER, name, n)?);
            }
            let mask = mask(p, &g, OWNER, POSE, n)?;
            Some((cols, mask))
        } else {
            None
        };
        let class = if optional.contains(&CLASS) {
            Some((
                column::<u32>(p, &g, OWNER, CLASS, n)?,
                mask(p, &g, OWNER, CLASS, n)?,
            ))
        } else {
            None
        };

        let optics = self.optics()?;
        let file_name = self.path.file_name().map(PathBuf::from).unwrap_or_default();
        let mut particles = Vec::with_capacity(n);
        for i in 0..n {
            let og = optics_group[i] as usize;
            if og >= optics.len() {
                return Err(H5Error::invalid(
                    p,
                    join(OWNER, PARTICLE_OPTICS_GROUP),
                    format!(
                        "row {i} refers to optics row {og}, /optics has {}",
                        optics.len()
                    ),
                ));
            }
            let v: [f64; 11] = std::array::from_fn(|k| f64_cols[k][i]);
            let (shift, ctf) = particle_from_f64(v);
            let pose = pose
                .as_ref()
                .and_then(|(c, m)| m[i].then(|| Pose::new(c[0][i], c[1][i], c[2][i])));
            let class = class.as_ref().and_then(|(c, m)| m[i].then(|| c[i]));
            particles.push(Particle {
                image: Some(ImageRef {
                    path: file_name.clone(),
                    index: i,
                }),
                optics_group: og,
                pose,
                shift,
                ctf,
                class,
            });
        }

        let owner = join(OWNER, EXTRA);
        let extra_group = open_group(p, &g, OWNER, EXTRA)?;
        let names = read_attr_strs(p, &extra_group, &owner, ATTR_ORDER)?
            .ok_or_else(|| H5Error::invalid(p, attr_object(&owner, ATTR_ORDER), "missing"))?;
        let mut extra = Vec::with_capacity(names.len());
        for name in &names {
            let object = join(&owner, name);
            let ds = open_dataset(p, &extra_group, &owner, name)?;
            let label = read_attr_str(p, &ds, &object, ATTR_LABEL)?.unwrap_or_else(|| name.clone());
            extra.push((label, strings(p, &ds, &object, n)?));
        }

        let set = ParticleSet {
            optics,
            particles,
            extra,
            base_dir: self
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        set.validate(p).map_err(|e| match e {
            FormatError::Invalid { field, problem, .. } => {
                H5Error::invalid(p, format!("/particles or /optics: {field}"), problem)
            }
            other => H5Error::Source {
                path: p.clone(),
                source: other,
            },
        })?;
        Ok(set)
    }

    /// The image references of the table the file was written from, `None` when it named no
    /// image (for example a simulated set).
    pub fn source_images(&self) -> Result<Option<SourceImages>> {
        let p = &self.path;
        let n = self.count;
        const OWNER: &str = "/particles";
        let g = open_group(p, &self.file, "/", PARTICLES)?;
        let optional = optional_groups(p, &g, OWNER, &[POSE, CLASS, SOURCE_IMAGE])?;
        if !optional.contains(&SOURCE_IMAGE) {
            return Ok(None);
        }
        let object = join(OWNER, SOURCE_PATH);
        let paths = strings(p, &open_dataset(p, &g, OWNER, SOURCE_PATH)?, &object, n)?;
        let index: Vec<u64> = column(p, &g, OWNER, SOURCE_INDEX, n)?;
        let mask = mask(p, &g, OWNER, SOURCE_IMAGE, n)?;
        let base_dir = read_attr_str(p, &g, OWNER, ATTR_SOURCE_BASE_DIR)?.unwrap_or_default();
        let images = (0..n)
            .map(|i| {
                mask[i].then(|| ImageRef {
                    path: PathBuf::from(&paths[i]),
                    index: index[i] as usize,
                })
            })
            .collect();
        Ok(Some(SourceImages {
            base_dir: PathBuf::from(base_dir),
            images,
        }))
    }

    /// The ground-truth volumes, `(name, volume)` in the order they were written; empty when
    /// the file has none.
    pub fn ground_truth_volumes(&self) -> Result<Vec<(String, Volume)>> {
        let p = &self.path;
        if !self.file.link_exists(GROUND_TRUTH) {
            return Ok(Vec::new());
        }
        const OWNER: &str = "/ground_truth";
        let g = open_group(p, &self.file, "/", GROUND_TRUTH)?;
        let names = match read_attr_strs(p, &g, OWNER, ATTR_NAMES)? {
            Some(names) => names,
            // A file from another writer: alphabetical order.
            None => g.member_names().at(p, OWNER, "list members")?,
        };
        let mut volumes = Vec::with_capacity(names.len());
        for name in names {
            let object = join(OWNER, &name);
            let ds = open_dataset(p, &g, OWNER, &name)?;
            let data: Array3<f32> = ds.read().at(p, &object, "read volume")?;
            let apix: f64 = read_attr(p, &ds, &object, ATTR_PIXEL_SIZE)?.ok_or_else(|| {
                H5Error::invalid(p, attr_object(&object, ATTR_PIXEL_SIZE), "missing")
            })?;
            let volume = Volume::new(data, apix as f32)
                .map_err(|e| H5Error::invalid(p, object, e.to_string()))?;
            volumes.push((name, volume));
        }
        Ok(volumes)
    }

    /// Reads the images `indices` (0-based, in any order, repeats allowed) into `out`,
    /// `[indices.len()][N][N]`. Runs of consecutive indices are read with one request each.
    pub fn read_images(&self, indices: &[usize], mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
        let n = self.box_size;
        if out.dim() != (indices.len(), n, n) {
            return Err(H5Error::invalid(
                &self.path,
                "/images",
                format!(
                    "the output buffer has shape {:?}, expected [{}, {n}, {n}]",
                    out.shape(),
                    indices.len()
                ),
            ));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.count) {
            return Err(H5Error::invalid(
                &self.path,
                "/images",
                format!(
                    "image index {bad} is past the end (the file holds {} images)",
                    self.count
                ),
            ));
        }
        let image_len = n * n;
        let mut bytes = Vec::new();
        for run in runs(indices) {
            if let Some(raw) = &self.raw {
                bytes.resize(run.len * image_len * 4, 0);
                raw.read(&self.path, (run.start * image_len * 4) as u64, &mut bytes)?;
                for &pos in &run.positions {
                    let k = indices[pos] - run.start;
                    let src = &bytes[k * image_len * 4..(k + 1) * image_len * 4];
                    let mut dst = out.index_axis_mut(Axis(0), pos);
                    match dst.as_slice_mut() {
                        Some(dst) => decode_f32_le(src, dst),
                        None => dst
                            .iter_mut()
                            .zip(src.chunks_exact(4))
                            .for_each(|(v, b)| *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    }
                }
            } else {
                let images: Array3<f32> = self
                    .images
                    .read_slice(s![run.start..run.start + run.len, .., ..])
                    .at(&self.path, "/images", "read images")?;
                for &pos in &run.positions {
                    let k = indices[pos] - run.start;
                    out.index_axis_mut(Axis(0), pos)
                        .assign(&images.index_axis(Axis(0), k));
                }
            }
        }
        Ok(())
    }
}

impl ImageSource for H5Particles {
    fn len(&self) -> usize {
        self.count
    }

    fn box_size(&self) -> usize {
        self.box_size
    }

    fn pixel_size(&self) -> f64 {
        self.pixel_size
    }

    fn read_batch(
        &self,
        indices: &[usize],
        out: ArrayViewMut3<'_, f32>,
    ) -> mcg_formats::Result<()> {
        self.read_images(indices, out).map_err(Into::into)
    }
}

/// Positioned reads of a contiguous `/images` block, bypassing HDF5 and its global lock.
#[derive(Debug)]
struct RawImages {
    file: std::fs::File,
    /// Byte offset of image 0 in the file.
    offset: u64,
}

impl RawImages {
    /// The direct path when `/images` is stored as one allocated block of `len` little-endian
    /// f32 values; `None` otherwise (chunked or filtered data, other byte orders, or platforms
    /// without positioned reads), and HDF5 reads the images instead.
    fn open(
        path: &Path,
        images: &Dataset,
        len: usize,
        dtype: &hdf5::Datatype,
    ) -> Result<Option<Self>> {
        if !cfg!(unix) || dtype.byte_order() != hdf5::datatype::ByteOrder::LittleEndian {
            return Ok(None);
        }
        let Some(offset) = images.offset() else {
            return Ok(None);
        };
        if images.storage_size() != (len * 4) as u64 || !images.filters().is_empty() {
            return Ok(None);
        }
        let file = std::fs::File::open(path).map_err(|e| H5Error::io(path, "open", e))?;
        Ok(Some(Self { file, offset }))
    }

    #[cfg(unix)]
    fn read(&self, path: &Path, byte_start: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, self.offset + byte_start)
            .map_err(|e| H5Error::io(path, "read images", e))
    }

    #[cfg(not(unix))]
    fn read(&self, _: &Path, _: u64, _: &mut [u8]) -> Result<()> {
        unreachable!("RawImages::open returns None on this platform")
    }
}

/// A run of consecutive image indices `start .. start + len` and the positions in the request
/// that asked for them.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    len: usize,
    positions: Vec<usize>,
}

/// Groups a request into runs of consecutive indices, ascending; a repeated index belongs to
/// one run with all its positions.
fn runs(indices: &[usize]) -> Vec<Run> {
    let mut order: Vec<usize> = (0..indices.len()).collect();
    order.sort_by_key(|&pos| indices[pos]);
    let mut runs: Vec<Run> = Vec::new();
    for pos in order {
        let i = indices[pos];
        match runs.last_mut() {
            Some(run) if i < run.start + run.len => run.positions.push(pos),
            Some(run) if i == run.start + run.len => {
                run.len += 1;
                run.positions.push(pos);
            }
            _ => runs.push(Run {
                start: i,
                len: 1,
                positions: vec![pos],
            }),
        }
    }
    runs
}

impl H5Particles {
    /// The optics table.
    fn optics(&self) -> Result<Vec<OpticsGroup>> {
        let p = &self.path;
        const OWNER: &str = "/optics";
        let g = open_group(p, &self.file, "/", OPTICS)?;
        let rows = open_dataset(p, &g, OWNER, OPTICS_ID)?.size();
        let id: Vec<u32> = column(p, &g, OWNER, OPTICS_ID, rows)?;
        let object = join(OWNER, OPTICS_NAME);
        let name = strings(p, &open_dataset(p, &g, OWNER, OPTICS_NAME)?, &object, rows)?;
        let mut f64_cols = Vec::with_capacity(OPTICS_F64.len());
        for (col, _) in OPTICS_F64 {
            f64_cols.push(column::<f64>(p, &g, OWNER, col, rows)?);
        }
        let optional = optional_groups(p, &g, OWNER, &[IMAGE_SIZE])?;
        let image_size = if optional.contains(&IMAGE_SIZE) {
            Some((
                column::<u64>(p, &g, OWNER, IMAGE_SIZE, rows)?,
                mask(p, &g, OWNER, IMAGE_SIZE, rows)?,
            ))
        } else {
            None
        };
        let mut optics: Vec<OpticsGroup> = (0..rows)
            .map(|r| OpticsGroup {
                id: id[r],
                name: name[r].clone(),
                pixel_size: f64_cols[0][r],
                image_size: image_size
                    .as_ref()
                    .and_then(|(c, m)| m[r].then(|| c[r] as usize)),
                voltage: f64_cols[1][r],
                cs: f64_cols[2][r],
                amplitude_contrast: f64_cols[3][r],
                extra: Vec::new(),
            })
            .collect();

        let owner = join(OWNER, EXTRA);
        let eg = open_group(p, &g, OWNER, EXTRA)?;
        let m = open_dataset(p, &eg, &owner, OPTICS_EXTRA_ROW)?.size();
        let row: Vec<u32> = column(p, &eg, &owner, OPTICS_EXTRA_ROW, m)?;
        let object = join(&owner, OPTICS_EXTRA_LABEL);
        let label = strings(
            p,
            &open_dataset(p, &eg, &owner, OPTICS_EXTRA_LABEL)?,
            &object,
            m,
        )?;
        let object = join(&owner, OPTICS_EXTRA_VALUE);
        let value = strings(
            p,
            &open_dataset(p, &eg, &owner, OPTICS_EXTRA_VALUE)?,
            &object,
            m,
        )?;
        for ((r, l), v) in row.into_iter().zip(label).zip(value) {
            let group = optics.get_mut(r as usize).ok_or_else(|| {
                H5Error::invalid(
                    p,
                    join(&owner, OPTICS_EXTRA_ROW),
                    format!("refers to optics row {r}, /optics has {rows}"),
                )
            })?;
            group.extra.push((l, v));
        }
        Ok(optics)
    }

    /// Checks that the required tables and columns exist with the right lengths, so that a
    /// damaged file fails at [`open`](Self::open).
    fn check_tables(&self) -> Result<()> {
        let p = &self.path;
        let g = open_group(p, &self.file, "/", PARTICLES)?;
        const OWNER: &str = "/particles";
        let mut required = vec![PARTICLE_OPTICS_GROUP];
        required.extend(PARTICLE_F64.iter().map(|(name, _)| *name));
        let optional = optional_groups(p, &g, OWNER, &[POSE, CLASS, SOURCE_IMAGE])?;
        if optional.contains(&POSE) {
            required.extend(POSE_COLUMNS);
        }
        if optional.contains(&CLASS) {
            required.push(CLASS);
        }
        if optional.contains(&SOURCE_IMAGE) {
            required.extend([SOURCE_PATH, SOURCE_INDEX]);
        }
        for name in required {
            check_len(
                p,
                &open_dataset(p, &g, OWNER, name)?,
                &join(OWNER, name),
                self.count,
            )?;
        }
        open_group(p, &g, OWNER, EXTRA)?;

        let g = open_group(p, &self.file, "/", OPTICS)?;
        const OPTICS_OWNER: &str = "/optics";
        let rows = open_dataset(p, &g, OPTICS_OWNER, OPTICS_ID)?.size();
        let mut required = vec![OPTICS_NAME];
        required.extend(OPTICS_F64.iter().map(|(name, _)| *name));
        for name in required {
            let object = join(OPTICS_OWNER, name);
            check_len(p, &open_dataset(p, &g, OPTICS_OWNER, name)?, &object, rows)?;
        }
        Ok(())
    }
}

/// Decodes little-endian f32 values from `src` into `dst` (of a quarter of its length).
fn decode_f32_le(src: &[u8], dst: &mut [f32]) {
    for (v, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Fails with a clear message when `path` is not an HDF5 file at all: HDF5 looks for its
/// signature at byte 0, 512, 1024, 2048, …
fn check_signature(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const SIGNATURE: [u8; 8] = *b"\x89HDF\r\n\x1a\n";
    let mut file = std::fs::File::open(path).map_err(|e| H5Error::io(path, "open", e))?;
    let size = file
        .metadata()
        .map_err(|e| H5Error::io(path, "open", e))?
        .len();
    let mut offset = 0u64;
    while offset + 8 <= size {
        let mut head = [0u8; 8];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut head))
            .map_err(|e| H5Error::io(path, "read", e))?;
        if head == SIGNATURE {
            return Ok(());
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Err(H5Error::invalid(
        path,
        "/",
        "not an HDF5 file (no HDF5 signature found)",
    ))
}

/// A required numeric root attribute.
fn required_attr<T: H5Type>(path: &Path, file: &File, name: &str) -> Result<T> {
    read_attr(path, file, "/", name)?
        .ok_or_else(|| H5Error::invalid(path, attr_object("/", name), "missing"))
}

/// Opens `owner/name` as a group, with a clear error when it is missing.
fn open_group(path: &Path, parent: &Group, owner: &str, name: &str) -> Result<Group> {
    let object = join(owner, name);
    if !parent.link_exists(name) {
        return Err(H5Error::invalid(path, object, "missing group"));
    }
    parent.group(name).at(path, &object, "open group")
}

/// Opens `owner/name` as a dataset, with a clear error when it is missing.
fn open_dataset(path: &Path, parent: &Group, owner: &str, name: &str) -> Result<Dataset> {
    let object = join(owner, name);
    if !parent.link_exists(name) {
        return Err(H5Error::invalid(path, object, "missing dataset"));
    }
    parent.dataset(name).at(path, &object, "open dataset")
}

/// The most a column can be compressed: a count that would need more than this many times the
/// file's size in metadata alone is a count the file cannot hold.
const MAX_COMPRESSION: u64 = 64;

/// Refuses a root `count` whose particle table alone (an optics group and the floating-point
/// columns per particle) is more than the file could hold, before any column is read: a small
/// file declaring 10⁹ particles would otherwise make every column a multi-gigabyte allocation.
fn check_count_fits(path: &Path, count: usize) -> Result<()> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| H5Error::io(path, "read the file size", e))?
        .len();
    let per_particle = 4 + 8 * PARTICLE_F64.len() as u64;
    let needed = (count as u64).saturating_mul(per_particle);
    if needed
        > file_len
            .saturating_mul(MAX_COMPRESSION)
            .saturating_add(1 << 20)
    {
        return Err(H5Error::invalid(
            path,
            attr_object("/", ATTR_COUNT),
            format!(
                "is {count}, whose particle table alone takes {} bytes, more than a file of \
                 {file_len} bytes can hold",
                needed
            ),
        ));
    }
    Ok(())
}

/// Fails unless `ds` is 1-D of length `len`.
fn check_len(path: &Path, ds: &Dataset, object: &str, len: usize) -> Result<()> {
    let shape = ds.shape();
    if shape != [len] {
        return Err(H5Error::invalid(
            path,
            object,
            format!("has shape {shape:?}, expected [{len}]"),
        ));
    }
    Ok(())
}

/// Reads the 1-D column `owner/name` of length `len`.
fn column<T: H5Type>(
    path: &Path,
    g: &Group,
    owner: &str,
    name: &str,
    len: usize,
) -> Result<Vec<T>> {
    let object = join(owner, name);
    let ds = open_dataset(path, g, owner, name)?;
    check_len(path, &ds, &object, len)?;
    ds.read_raw::<T>().at(path, &object, "read")
}

/// Reads a 1-D column of variable-length strings (UTF-8 or ASCII) of length `len`.
fn strings(path: &Path, ds: &Dataset, object: &str, len: usize) -> Result<Vec<String>> {
    check_len(path, ds, object, len)?;
    let descriptor = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .at(path, object, "read type")?;
    match descriptor {
        TypeDescriptor::VarLenUnicode => Ok(ds
            .read_raw::<VarLenUnicode>()
            .at(path, object, "read")?
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()),
        TypeDescriptor::VarLenAscii => Ok(ds
            .read_raw::<VarLenAscii>()
            .at(path, object, "read")?
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()),
        other => Err(H5Error::invalid(
            path,
            object,
            format!("has type {other}, expected variable-length strings"),
        )),
    }
}

/// The optional column groups a table declares, each checked against `known`.
fn optional_groups(
    path: &Path,
    g: &Group,
    owner: &str,
    known: &[&'static str],
) -> Result<Vec<&'static str>> {
    let listed = read_attr_strs(path, g, owner, ATTR_OPTIONAL)?
        .ok_or_else(|| H5Error::invalid(path, attr_object(owner, ATTR_OPTIONAL), "missing"))?;
    listed
        .iter()
        .map(|name| {
            known.iter().copied().find(|k| k == name).ok_or_else(|| {
                H5Error::invalid(
                    path,
                    attr_object(owner, ATTR_OPTIONAL),
                    format!("lists {name:?}, expected some of {known:?}"),
                )
            })
        })
        .collect()
}

/// Which rows have the optional group `name`: its `<name>_present` mask, or every row when the
/// file has no mask.
fn mask(path: &Path, g: &Group, owner: &str, name: &str, len: usize) -> Result<Vec<bool>> {
    let mask_name = format!("{name}{PRESENT_SUFFIX}");
    if !g.link_exists(&mask_name) {
        return Ok(vec![true; len]);
    }
    let values: Vec<u8> = column(path, g, owner, &mask_name, len)?;
    Ok(values.into_iter().map(|m| m != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{H5Writer, ImagesLayout};
    use mcg_formats::{OpticsGroup, ParticleSet};
    use ndarray::Array3;

    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        send_sync::<H5Particles>();
    };

    #[test]
    fn runs_group_consecutive_and_repeated_indices() {
        let r = runs(&[7, 3, 4, 9, 3, 5, 0]);
        assert_eq!(
            r,
            [
                Run {
                    start: 0,
                    len: 1,
                    positions: vec![6]
                },
                Run {
                    start: 3,
                    len: 3,
                    positions: vec![1, 4, 2, 5]
                },
                Run {
                    start: 7,
                    len: 1,
                    positions: vec![0]
                },
                Run {
                    start: 9,
                    len: 1,
                    positions: vec![3]
                },
            ]
        );
        assert!(runs(&[]).is_empty());
    }

    fn minimal_set(n: usize) -> ParticleSet {
        ParticleSet {
            optics: vec![OpticsGroup::single(5.0, Some(4), &Default::default())],
            particles: (0..n)
                .map(|_| Particle {
                    image: None,
                    optics_group: 0,
                    pose: None,
                    shift: Default::default(),
                    ctf: Default::default(),
                    class: None,
                })
                .collect(),
            extra: vec![],
            base_dir: PathBuf::new(),
        }
    }

    /// Files whose `/images` is chunked (as another program may write them) are read through
    /// HDF5 instead of the direct path, with the same result.
    #[test]
    fn chunked_images_are_read_through_hdf5() {
        let dir = tempfile::tempdir().unwrap();
        let (n, b) = (23, 4);
        let images = Array3::from_shape_fn((n, b, b), |(i, y, x)| (i * 100 + y * 10 + x) as f32);
        let mut paths = Vec::new();
        for (name, layout) in [
            ("chunked.h5", ImagesLayout::Chunked(5)),
            ("contiguous.h5", ImagesLayout::Contiguous),
        ] {
            let path = dir.path().join(name);
            let mut w = H5Writer::create_with_layout(&path, b, 5.0, n, layout).unwrap();
            w.write_images(0, images.view()).unwrap();
            w.finish(&minimal_set(n)).unwrap();
            paths.push(path);
        }
        let chunked = H5Particles::open(&paths[0]).unwrap();
        let contiguous = H5Particles::open(&paths[1]).unwrap();
        assert!(chunked.raw.is_none());
        assert!(contiguous.raw.is_some());
        let indices = [22, 0, 5, 6, 7, 6, 13, 4];
        for reader in [&chunked, &contiguous] {
            let mut out = Array3::zeros((indices.len(), b, b));
            reader.read_images(&indices, out.view_mut()).unwrap();
            for (k, &i) in indices.iter().enumerate() {
                assert_eq!(out.index_axis(Axis(0), k), images.index_axis(Axis(0), i));
            }
        }
    }
}
