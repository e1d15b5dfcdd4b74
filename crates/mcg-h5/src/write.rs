//! Writing a particle file: [`H5Writer`] streams the images in batches into a temporary file
//! beside the target, then writes the metadata and renames the finished file into place.

use std::fmt;
use std::path::{Path, PathBuf};

use hdf5::{Dataset, File, Group, H5Type};
use mcg_formats::{ImageSource, ParticleSet};
use mcg_physics::Volume;
use ndarray::{Array3, ArrayView3, s};

use crate::error::{Context, H5Error, Result};
use crate::layout::*;

/// Writes one particle file. Create it with the number and size of the images, write every
/// image with [`write_images`](Self::write_images) (in batches, in any order), optionally add
/// ground-truth volumes, then call [`finish`](Self::finish) with the particle table.
///
/// Nothing appears at the target path before `finish` succeeds: the data goes to a hidden
/// temporary file in the same folder, which `finish` renames over the target (replacing an
/// existing file atomically). Dropping the writer without finishing removes the temporary file.
pub struct H5Writer {
    /// The target path, named in every error.
    path: PathBuf,
    file: Option<File>,
    images: Option<Dataset>,
    box_size: usize,
    count: usize,
    /// One bit per image, set once the image has been written.
    written: Vec<u64>,
    /// Names of the ground-truth volumes, in the order written.
    ground_truth: Vec<String>,
    /// The temporary file the data goes to until `finish` renames it; `None` once renamed.
    /// Declared after `file`, so that the file is closed before an unfinished one is removed.
    staged: Option<mcg_fsio::Staged>,
}

impl H5Writer {
    /// Starts a file at `path` for `count` images of `box_size`² pixels of `pixel_size` Å.
    ///
    /// The temporary file is created at once, so an unwritable folder fails here.
    pub fn create(path: &Path, box_size: usize, pixel_size: f64, count: usize) -> Result<Self> {
        Self::create_with_layout(path, box_size, pixel_size, count, ImagesLayout::Contiguous)
    }

    /// Writes the images `start .. start + images.len()`, `[k][N][N]` with `N` the box size.
    ///
    /// Memory does not grow with the number of images: the batch goes straight to the file.
    pub fn write_images(&mut self, start: usize, images: ArrayView3<'_, f32>) -> Result<()> {
        let (k, ny, nx) = images.dim();
        let n = self.box_size;
        if ny != n || nx != n {
            return Err(H5Error::invalid(
                &self.path,
                "/images",
                format!("a batch of shape [{k}, {ny}, {nx}] was given, expected [{k}, {n}, {n}]"),
            ));
        }
        let end = start.checked_add(k).filter(|&e| e <= self.count);
        let Some(end) = end else {
            return Err(H5Error::invalid(
                &self.path,
                "/images",
                format!(
                    "images {start}..{start}+{k} run past the end (the file holds {} images)",
                    self.count
                ),
            ));
        };
        if k == 0 {
            return Ok(());
        }
        let data = images.as_standard_layout();
        self.images()
            .write_slice(&data, s![start..end, .., ..])
            .at(&self.path, "/images", "write images")?;
        for i in start..end {
            self.written[i / 64] |= 1 << (i % 64);
        }
        Ok(())
    }

    /// Stores a ground-truth volume as `/ground_truth/<name>` (f32, `[z][y][x]`) with its voxel
    /// size in the attribute `pixel_size` (Å). `name` must be a non-empty HDF5 name (no `/`,
    /// not `.` or `..`) not used before, for example `beta_00`.
    pub fn write_ground_truth_volume(&mut self, name: &str, volume: &Volume) -> Result<()> {
        let object = join("/ground_truth", name);
        if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
            return Err(H5Error::invalid(
                &self.path,
                object,
                "a volume name must be non-empty, not `.` or `..`, and hold no `/` or NUL",
            ));
        }
        if self.ground_truth.iter().any(|n| n == name) {
            return Err(H5Error::invalid(
                &self.path,
                object,
                "a volume of this name was written already",
            ));
        }
        let file = self.file();
        let group = if self.ground_truth.is_empty() {
            create_group(&self.path, file, "/", GROUND_TRUTH)?
        } else {
            file.group(GROUND_TRUTH)
                .at(&self.path, "/ground_truth", "open group")?
        };
        let ds = group
            .new_dataset_builder()
            .obj_track_times(false)
            .with_data(volume.data().view())
            .create(name)
            .at(&self.path, &object, "write dataset")?;
        write_attr(
            &self.path,
            &ds,
            &object,
            ATTR_PIXEL_SIZE,
            &f64::from(volume.apix()),
        )?;
        self.ground_truth.push(name.to_owned());
        Ok(())
    }

    /// Checks that every image was written, writes the particle table `set` (whose particle
    /// `i` is image `i`) and renames the file into place.
    ///
    /// The image references of `set` are stored as provenance (`source_image_*`), never
    /// followed: the pixels are the ones written with [`write_images`](Self::write_images).
    pub fn finish(mut self, set: &ParticleSet) -> Result<()> {
        if let Some(i) = (0..self.count).find(|&i| self.written[i / 64] & (1 << (i % 64)) == 0) {
            return Err(H5Error::invalid(
                &self.path,
                "/images",
                format!(
                    "image {i} was never written (the file holds {} images)",
                    self.count
                ),
            ));
        }
        check_set(&self.path, set, self.count)?;
        let file = self.file();
        write_particles(&self.path, file, set)?;
        write_optics(&self.path, file, set)?;
        if !self.ground_truth.is_empty() {
            let group = file
                .group(GROUND_TRUTH)
                .at(&self.path, "/ground_truth", "open group")?;
            let names: Vec<&str> = self.ground_truth.iter().map(String::as_str).collect();
            write_attr_strs(&self.path, &group, "/ground_truth", ATTR_NAMES, &names)?;
        }
        self.images = None;
        if let Some(file) = self.file.take() {
            file.close().at(&self.path, "/", "close file")?;
        }
        if let Some(staged) = self.staged.take() {
            staged.commit()?;
        }
        tracing::debug!(path = %self.path.display(), count = self.count, "wrote particle file");
        Ok(())
    }
}

/// Writes `set` and its images to an HDF5 particle file at `path`: the images are read from
/// `images` (image `i` is particle `i`) `batch` at a time and `progress(done, total)` is called
/// after each batch. The box and pixel size come from `images`.
pub fn write_particle_set(
    path: &Path,
    set: &ParticleSet,
    images: &dyn ImageSource,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let n = set.len();
    if images.len() != n {
        return Err(H5Error::invalid(
            path,
            "/images",
            format!(
                "the image source holds {} images, the particle set {n} particles",
                images.len()
            ),
        ));
    }
    if batch == 0 {
        return Err(H5Error::invalid(
            path,
            "/images",
            "the batch size must be at least 1",
        ));
    }
    let box_size = images.box_size();
    let mut writer = H5Writer::create(path, box_size, images.pixel_size(), n)?;
    let mut buf = Array3::<f32>::zeros((batch.min(n), box_size, box_size));
    let mut indices = Vec::with_capacity(batch);
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        indices.clear();
        indices.extend(start..end);
        let mut out = buf.slice_mut(s![..end - start, .., ..]);
        images
            .read_batch(&indices, out.view_mut())
            .map_err(|source| H5Error::Source {
                path: path.to_path_buf(),
                source,
            })?;
        writer.write_images(start, out.view())?;
        progress(end, n);
    }
    writer.finish(set)
}

/// How `/images` is stored. Files this crate writes are always contiguous; the chunked layout
/// exists so that tests can check the reader on files other programs may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImagesLayout {
    /// One contiguous block: a run of images is one read, and the reader can bypass HDF5.
    Contiguous,
    /// Chunks of this many images.
    #[cfg_attr(not(test), allow(dead_code))]
    Chunked(usize),
}

impl H5Writer {
    pub(crate) fn create_with_layout(
        path: &Path,
        box_size: usize,
        pixel_size: f64,
        count: usize,
        layout: ImagesLayout,
    ) -> Result<Self> {
        if box_size == 0 {
            return Err(H5Error::invalid(
                path,
                attr_object("/", ATTR_BOX_SIZE),
                "the box size must be at least 1 pixel",
            ));
        }
        if !(pixel_size.is_finite() && pixel_size > 0.0) {
            return Err(H5Error::invalid(
                path,
                attr_object("/", ATTR_PIXEL_SIZE),
                format!("the pixel size is {pixel_size} Å, expected a finite number above 0"),
            ));
        }
        let staged = mcg_fsio::Staged::new(path)?;
        let file = File::create_excl(staged.path()).at(path, "/", "create the temporary file")?;
        // From here on, dropping `writer` (on an error below) removes the temporary file.
        let mut writer = Self {
            path: path.to_path_buf(),
            file: Some(file),
            images: None,
            box_size,
            count,
            written: vec![0; count.div_ceil(64)],
            ground_truth: Vec::new(),
            staged: Some(staged),
        };
        let file = writer.file();
        let p = path;
        write_attr_str(p, file, "/", ATTR_FORMAT, FORMAT)?;
        write_attr(p, file, "/", ATTR_FORMAT_VERSION, &FORMAT_VERSION)?;
        write_attr(p, file, "/", ATTR_BOX_SIZE, &(box_size as u64))?;
        write_attr(p, file, "/", ATTR_PIXEL_SIZE, &pixel_size)?;
        write_attr(p, file, "/", ATTR_COUNT, &(count as u64))?;
        let software = format!("multicryogan {}", env!("CARGO_PKG_VERSION"));
        write_attr_str(p, file, "/", ATTR_SOFTWARE, &software)?;
        let builder = file.new_dataset::<f32>().obj_track_times(false);
        let builder = match layout {
            ImagesLayout::Contiguous => builder.no_chunk(),
            ImagesLayout::Chunked(k) => {
                builder.chunk((k.clamp(1, count.max(1)), box_size, box_size))
            }
        };
        let images = builder
            .shape((count, box_size, box_size))
            .create(IMAGES)
            .at(p, "/images", "create dataset")?;
        writer.images = Some(images);
        Ok(writer)
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("the file is open until finish")
    }

    fn images(&self) -> &Dataset {
        self.images.as_ref().expect("/images is open until finish")
    }
}

impl Drop for H5Writer {
    fn drop(&mut self) {
        self.images = None;
        if let Some(file) = self.file.take() {
            let _ = file.close();
        }
        // Dropping `staged` unfinished removes the temporary file.
        self.staged = None;
    }
}

impl fmt::Debug for H5Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H5Writer")
            .field("path", &self.path)
            .field("staged", &self.staged)
            .field("box_size", &self.box_size)
            .field("count", &self.count)
            .field("ground_truth", &self.ground_truth)
            .finish_non_exhaustive()
    }
}

/// Checks that `set` fits a file of `count` images before anything is written.
fn check_set(path: &Path, set: &ParticleSet, count: usize) -> Result<()> {
    if set.len() != count {
        return Err(H5Error::invalid(
            path,
            "/particles",
            format!(
                "the particle set holds {} particles, the file was created for {count} images",
                set.len()
            ),
        ));
    }
    let groups = set.optics.len();
    if u32::try_from(groups).is_err() {
        return Err(H5Error::invalid(
            path,
            "/optics",
            format!("{groups} optics groups are more than a u32 counts"),
        ));
    }
    if let Some((i, p)) = set
        .particles
        .iter()
        .enumerate()
        .find(|(_, p)| p.optics_group >= groups)
    {
        return Err(H5Error::invalid(
            path,
            "/particles/optics_group",
            format!(
                "particle {i} refers to optics group {}, the set has {groups}",
                p.optics_group
            ),
        ));
    }
    for (label, values) in &set.extra {
        if values.len() != count {
            return Err(H5Error::invalid(
                path,
                format!("/particles/extra ({label})"),
                format!("the column holds {} values, expected {count}", values.len()),
            ));
        }
    }
    Ok(())
}

/// Writes a 1-D column `owner/name`, with a `units` attribute when given.
fn write_column<T: H5Type>(
    path: &Path,
    group: &Group,
    owner: &str,
    name: &str,
    data: &[T],
    units: Option<&str>,
) -> Result<Dataset> {
    let object = join(owner, name);
    let ds = group
        .new_dataset_builder()
        .obj_track_times(false)
        .with_data(data)
        .create(name)
        .at(path, &object, "write dataset")?;
    if let Some(units) = units {
        write_attr_str(path, &ds, &object, ATTR_UNITS, units)?;
    }
    Ok(ds)
}

/// Writes the `<group>_present` mask when only some rows have an optional group.
fn write_mask(
    path: &Path,
    group: &Group,
    owner: &str,
    name: &str,
    presence: &Presence,
) -> Result<()> {
    if let Presence::Partial(mask) = presence {
        write_column(
            path,
            group,
            owner,
            &format!("{name}{PRESENT_SUFFIX}"),
            mask,
            None,
        )?;
    }
    Ok(())
}

/// A path as UTF-8 text, or an error naming the column and row.
fn path_text<'a>(path: &Path, object: &str, row: usize, p: &'a Path) -> Result<&'a str> {
    p.to_str().ok_or_else(|| {
        H5Error::invalid(
            path,
            object,
            format!("row {row}: the path {p:?} is not valid UTF-8"),
        )
    })
}

/// Writes `/particles`: see the crate documentation for the columns.
fn write_particles(path: &Path, file: &File, set: &ParticleSet) -> Result<()> {
    const OWNER: &str = "/particles";
    let ps = &set.particles;
    let g = create_group(path, file, "/", PARTICLES)?;
    let mut optional: Vec<&str> = Vec::new();

    let optics_group: Vec<u32> = ps.iter().map(|p| p.optics_group as u32).collect();
    write_column(path, &g, OWNER, PARTICLE_OPTICS_GROUP, &optics_group, None)?;

    let pose = Presence::of(ps.iter().map(|p| p.pose.is_some()));
    if pose != Presence::Absent {
        optional.push(POSE);
        for (k, name) in POSE_COLUMNS.iter().enumerate() {
            let col: Vec<f64> = ps
                .iter()
                .map(|p| p.pose.map_or(0.0, |q| [q.rot, q.tilt, q.psi][k]))
                .collect();
            write_column(path, &g, OWNER, name, &col, Some("deg"))?;
        }
        write_mask(path, &g, OWNER, POSE, &pose)?;
    }

    let values: Vec<[f64; 11]> = ps.iter().map(particle_f64).collect();
    for (k, (name, units)) in PARTICLE_F64.iter().enumerate() {
        let col: Vec<f64> = values.iter().map(|v| v[k]).collect();
        write_column(path, &g, OWNER, name, &col, Some(units))?;
    }

    let class = Presence::of(ps.iter().map(|p| p.class.is_some()));
    if class != Presence::Absent {
        optional.push(CLASS);
        let col: Vec<u32> = ps.iter().map(|p| p.class.unwrap_or(0)).collect();
        write_column(path, &g, OWNER, CLASS, &col, None)?;
        write_mask(path, &g, OWNER, CLASS, &class)?;
    }

    let source = Presence::of(ps.iter().map(|p| p.image.is_some()));
    if source != Presence::Absent {
        optional.push(SOURCE_IMAGE);
        let object = join(OWNER, SOURCE_PATH);
        let mut paths = Vec::with_capacity(ps.len());
        for (i, p) in ps.iter().enumerate() {
            let text = match &p.image {
                Some(r) => path_text(path, &object, i, &r.path)?,
                None => "",
            };
            paths.push(to_h5_string(path, &object, text)?);
        }
        write_column(path, &g, OWNER, SOURCE_PATH, &paths, None)?;
        let index: Vec<u64> = ps
            .iter()
            .map(|p| p.image.as_ref().map_or(0, |r| r.index as u64))
            .collect();
        write_column(path, &g, OWNER, SOURCE_INDEX, &index, None)?;
        write_mask(path, &g, OWNER, SOURCE_IMAGE, &source)?;
        let base = path_text(
            path,
            &attr_object(OWNER, ATTR_SOURCE_BASE_DIR),
            0,
            &set.base_dir,
        )?;
        write_attr_str(path, &g, OWNER, ATTR_SOURCE_BASE_DIR, base)?;
    }
    write_attr_strs(path, &g, OWNER, ATTR_OPTIONAL, &optional)?;

    let owner = join(OWNER, EXTRA);
    let extra = create_group(path, &g, OWNER, EXTRA)?;
    let names = dataset_names(set.extra.iter().map(|(label, _)| label.as_str()));
    for ((label, values), name) in set.extra.iter().zip(&names) {
        let object = join(&owner, name);
        let col = to_h5_strings(path, &object, values.iter().map(String::as_str))?;
        let ds = write_column(path, &extra, &owner, name, &col, None)?;
        write_attr_str(path, &ds, &object, ATTR_LABEL, label)?;
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_attr_strs(path, &extra, &owner, ATTR_ORDER, &names)
}

/// Writes `/optics`: see the crate documentation for the columns.
fn write_optics(path: &Path, file: &File, set: &ParticleSet) -> Result<()> {
    const OWNER: &str = "/optics";
    let os = &set.optics;
    let g = create_group(path, file, "/", OPTICS)?;
    let mut optional: Vec<&str> = Vec::new();

    let id: Vec<u32> = os.iter().map(|o| o.id).collect();
    write_column(path, &g, OWNER, OPTICS_ID, &id, None)?;
    let object = join(OWNER, OPTICS_NAME);
    let name = to_h5_strings(path, &object, os.iter().map(|o| o.name.as_str()))?;
    write_column(path, &g, OWNER, OPTICS_NAME, &name, None)?;
    let values: Vec<[f64; 4]> = os.iter().map(optics_f64).collect();
    for (k, (name, units)) in OPTICS_F64.iter().enumerate() {
        let col: Vec<f64> = values.iter().map(|v| v[k]).collect();
        write_column(path, &g, OWNER, name, &col, Some(units))?;
    }
    let image_size = Presence::of(os.iter().map(|o| o.image_size.is_some()));
    if image_size != Presence::Absent {
        optional.push(IMAGE_SIZE);
        let col: Vec<u64> = os
            .iter()
            .map(|o| o.image_size.unwrap_or(0) as u64)
            .collect();
        write_column(path, &g, OWNER, IMAGE_SIZE, &col, Some("px"))?;
        write_mask(path, &g, OWNER, IMAGE_SIZE, &image_size)?;
    }
    write_attr_strs(path, &g, OWNER, ATTR_OPTIONAL, &optional)?;

    // Extra optics columns in long format: row `row[j]` has `label[j]` = `value[j]`, in the
    // order of each group's list, so that groups with different columns lose nothing.
    let owner = join(OWNER, EXTRA);
    let extra = create_group(path, &g, OWNER, EXTRA)?;
    let pairs: Vec<(u32, &str, &str)> = os
        .iter()
        .enumerate()
        .flat_map(|(r, o)| {
            o.extra
                .iter()
                .map(move |(l, v)| (r as u32, l.as_str(), v.as_str()))
        })
        .collect();
    let rows: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    write_column(path, &extra, &owner, OPTICS_EXTRA_ROW, &rows, None)?;
    let object = join(&owner, OPTICS_EXTRA_LABEL);
    let labels = to_h5_strings(path, &object, pairs.iter().map(|p| p.1))?;
    write_column(path, &extra, &owner, OPTICS_EXTRA_LABEL, &labels, None)?;
    let object = join(&owner, OPTICS_EXTRA_VALUE);
    let values = to_h5_strings(path, &object, pairs.iter().map(|p| p.2))?;
    write_column(path, &extra, &owner, OPTICS_EXTRA_VALUE, &values, None)?;
    Ok(())
}
