//! What a file holds, as `multicryogan info` says it: an MRC map or stack (its header and
//! measured statistics) or a particle set of any kind [`crate::input`] opens (its particles,
//! optics groups and columns, and optionally its pixels' statistics).
//!
//! [`describe`] returns a [`FileInfo`]; its serialised form (through [`serde_json::to_value`])
//! is the command's JSON, field for field, and [`text`] that JSON's text form.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use mcg_formats::mrc::{self, MrcStack};
use mcg_formats::star::read_star;
use mcg_formats::{ImageSource, ParticleSet};
use ndarray::{Array2, Array3, ArrayView2};
use serde::Serialize;
use serde_json::Value;

use crate::input::{self, Kind, Locate};

/// What a file holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FileInfo {
    /// An MRC map or image stack.
    Mrc(MrcInfo),
    /// A particle set.
    Particles(ParticleSetInfo),
}

/// An MRC file: its header, and its voxels' statistics measured section by section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MrcInfo {
    /// The file.
    pub file: PathBuf,
    /// `MRC image stack` or `MRC volume` (by the header's space group).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Sections, rows, columns.
    pub shape_zyx: [usize; 3],
    /// The voxels' mode and its code, e.g. `Float32 (2)`.
    pub mode: String,
    /// The byte order the file was read in.
    pub endian: String,
    /// Voxel size in Å (`None`: the header does not record one).
    #[serde(rename = "voxel_size_A")]
    pub voxel_size_a: Option<f64>,
    /// The cell's edges, Å.
    #[serde(rename = "cell_A")]
    pub cell_a: [f32; 3],
    /// The origin, Å.
    #[serde(rename = "origin_A")]
    pub origin_a: [f32; 3],
    /// The space group (0: an image stack).
    pub ispg: i32,
    /// The format's version.
    pub nversion: i32,
    /// The MAP word (`MAP ` in a valid file).
    pub map_word: String,
    /// The statistics the header records.
    pub header_stats: HeaderStats,
    /// The statistics of the voxels as read (`None`: no voxels).
    pub measured_stats: Option<PixelStats>,
    /// The header's labels.
    pub labels: Vec<String>,
}

/// The statistics an MRC header records.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeaderStats {
    /// DMIN.
    pub min: f32,
    /// DMAX.
    pub max: f32,
    /// DMEAN.
    pub mean: f32,
    /// RMS.
    pub rms: f32,
}

/// A particle set: counts, optics groups, columns, and (when asked) its pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParticleSetInfo {
    /// The file.
    pub file: PathBuf,
    /// Always `particle set`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Particles.
    pub particles: usize,
    /// Particles with an image reference.
    pub with_image: usize,
    /// Particles with a pose.
    pub with_pose: usize,
    /// Particles with a non-zero shift.
    pub with_shift: usize,
    /// Particles with a class.
    pub with_class: usize,
    /// Distinct image stacks the particles refer to.
    pub stacks: usize,
    /// The optics groups.
    pub optics_groups: Vec<OpticsGroupInfo>,
    /// What each particle records: image, optics group and CTF always, pose, shift and class
    /// when any particle has one, then every column without a typed meaning.
    pub columns: Vec<String>,
    /// A STAR file's data blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub star_blocks: Option<Vec<StarBlockInfo>>,
    /// Every image read once (when asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_read: Option<ImagesRead>,
}

/// One optics group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpticsGroupInfo {
    /// Its number.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Pixel size, Å.
    #[serde(rename = "pixel_size_A")]
    pub pixel_size_a: f64,
    /// Image edge, pixels (`None`: not recorded).
    #[serde(rename = "box")]
    pub box_size: Option<usize>,
    /// Acceleration voltage, kV.
    #[serde(rename = "voltage_kV")]
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    pub cs_mm: f64,
    /// Amplitude contrast.
    pub amplitude_contrast: f64,
    /// Its particles.
    pub particles: usize,
}

/// One data block of a STAR file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StarBlockInfo {
    /// `data_NAME`.
    pub block: String,
    /// Rows of its table (0: none).
    pub rows: usize,
    /// Its table's column labels.
    pub columns: Vec<String>,
}

/// Every image of a set, read once in batches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagesRead {
    /// Their pixels' statistics (`None`: no pixels).
    pub stats: Option<PixelStats>,
    /// Seconds from the start of [`describe`], metadata included.
    pub seconds: f64,
    /// This process's peak resident memory afterwards, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Statistics of pixel values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PixelStats {
    /// How many.
    pub pixels: u64,
    /// The smallest.
    pub min: f32,
    /// The largest.
    pub max: f32,
    /// The mean.
    pub mean: f64,
    /// The standard deviation (population).
    pub std: f64,
}

/// Says what `path` holds (by its extension, as [`input::kind_of`] reads it). An MRC file is
/// described as a map or stack, unless `read_images` asks for a `.mrcs` stack's images as a
/// particle set; every other kind as a particle set, whose images `read_images` reads once, in
/// batches of 1024 (never all at once). `locate` helps find a set's images and pixel size.
pub fn describe(path: &Path, locate: &Locate, read_images: bool) -> Result<FileInfo> {
    Ok(match input::kind_of(path)? {
        Kind::Mrc if !read_images || !is_stack_name(path) => FileInfo::Mrc(mrc_info(path)?),
        _ => FileInfo::Particles(particles_info(path, locate, read_images)?),
    })
}

fn is_stack_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mrcs"))
}

fn mrc_info(path: &Path) -> Result<MrcInfo> {
    let header = mrc::read_header(path)?;
    let (nz, ny, nx) = header.shape();
    // Measured statistics, streamed section by section.
    let stack = MrcStack::open(path)?;
    let mut section = Array2::<f32>::zeros((ny, nx));
    let mut stats = RunningStats::default();
    for z in 0..stack.len() {
        stack.read_into(z, section.view_mut())?;
        stats.add(section.view());
    }
    Ok(MrcInfo {
        file: path.to_path_buf(),
        kind: if header.is_stack() {
            "MRC image stack"
        } else {
            "MRC volume"
        },
        shape_zyx: [nz, ny, nx],
        mode: format!("{:?} ({})", header.mode, header.mode.code()),
        endian: format!("{:?}", header.endian),
        voxel_size_a: header.voxel_size(),
        cell_a: header.cell,
        origin_a: header.origin,
        ispg: header.ispg,
        nversion: header.nversion,
        map_word: String::from_utf8_lossy(&header.map).into_owned(),
        header_stats: HeaderStats {
            min: header.dmin,
            max: header.dmax,
            mean: header.dmean,
            rms: header.rms,
        },
        measured_stats: stats.summary(),
        labels: header.labels,
    })
}

fn particles_info(path: &Path, locate: &Locate, read_images: bool) -> Result<ParticleSetInfo> {
    let kind = input::kind_of(path)?;
    let start = Instant::now();
    let (set, images) = if read_images {
        let (set, images) = input::particles(path, locate)?;
        (set, Some(images))
    } else {
        (input::metadata(path, locate)?, None)
    };
    let mut info = set_summary(path, &set);
    if kind == Kind::Star {
        let star = read_star(path)?;
        let blocks = star
            .blocks
            .iter()
            .map(|b| StarBlockInfo {
                block: format!("data_{}", b.name),
                rows: b.table.as_ref().map_or(0, |t| t.len()),
                columns: b
                    .table
                    .as_ref()
                    .map(|t| t.labels.clone())
                    .unwrap_or_default(),
            })
            .collect();
        info.star_blocks = Some(blocks);
    }
    if let Some(images) = images {
        let stats = read_all(images.as_ref())?;
        info.images_read = Some(ImagesRead {
            stats: stats.summary(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_mib: mcg_fsio::budget::peak_rss_mib(),
        });
    }
    Ok(info)
}

/// The counts, optics groups and columns of `set`, read from `path`.
pub fn set_summary(path: &Path, set: &ParticleSet) -> ParticleSetInfo {
    let n = set.len();
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count();
    let with_pose = count(&|i| set.particles[i].pose.is_some());
    let with_shift = count(&|i| set.particles[i].shift.x != 0.0 || set.particles[i].shift.y != 0.0);
    let with_class = count(&|i| set.particles[i].class.is_some());
    let with_image = count(&|i| set.particles[i].image.is_some());
    let mut columns = vec!["image".to_string(), "optics group".into(), "ctf".into()];
    if with_pose > 0 {
        columns.push("pose".into());
    }
    if with_shift > 0 {
        columns.push("shift".into());
    }
    if with_class > 0 {
        columns.push("class".into());
    }
    columns.extend(set.extra.iter().map(|(label, _)| label.clone()));
    let stacks: BTreeSet<PathBuf> = set
        .particles
        .iter()
        .filter_map(|p| p.image.as_ref())
        .map(|r| set.resolve(r))
        .collect();
    ParticleSetInfo {
        file: path.to_path_buf(),
        kind: "particle set",
        particles: n,
        with_image,
        with_pose,
        with_shift,
        with_class,
        stacks: stacks.len(),
        optics_groups: set
            .optics
            .iter()
            .map(|g| OpticsGroupInfo {
                id: g.id,
                name: g.name.clone(),
                pixel_size_a: g.pixel_size,
                box_size: g.image_size,
                voltage_kv: g.voltage,
                cs_mm: g.cs,
                amplitude_contrast: g.amplitude_contrast,
                particles: set
                    .particles
                    .iter()
                    .filter(|p| set.optics[p.optics_group].id == g.id)
                    .count(),
            })
            .collect(),
        columns,
        star_blocks: None,
        images_read: None,
    }
}

/// Reads every image in batches of 1024, accumulating statistics.
fn read_all(images: &dyn ImageSource) -> Result<RunningStats> {
    let (n, b) = (images.len(), images.box_size());
    let batch = 1024.min(n.max(1));
    let mut buffer = Array3::<f32>::zeros((batch, b, b));
    let mut stats = RunningStats::default();
    let mut start = 0;
    while start < n {
        let count = batch.min(n - start);
        let indices: Vec<usize> = (start..start + count).collect();
        let mut view = buffer.slice_mut(ndarray::s![..count, .., ..]);
        images
            .read_batch(&indices, view.view_mut())
            .with_context(|| format!("reading images {start}..{}", start + count))?;
        for image in view.outer_iter() {
            stats.add(image);
        }
        start += count;
    }
    Ok(stats)
}

/// The text form of a report such as a [`FileInfo`]'s JSON (`info` without `--json`): a
/// `key: value` line per field, nested objects and lists of objects indented below their key
/// (list items numbered `[i]`), other lists joined by commas, null as `-`.
pub fn text(report: &Value) -> String {
    let mut out = String::new();
    write_text(&mut out, report, 0);
    out
}

fn write_text(out: &mut String, value: &Value, indent: usize) {
    // Writing to a String cannot fail.
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{k}:");
                        write_text(out, v, indent + 1);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                        let _ = writeln!(out, "{pad}{k}:");
                        for (i, item) in items.iter().enumerate() {
                            let _ = writeln!(out, "{pad}  [{i}]");
                            write_text(out, item, indent + 2);
                        }
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{k}: {}", scalar(v));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(", "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Running pixel statistics (f64 sums of the values and their squares).
#[derive(Debug, Clone)]
pub struct RunningStats {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f32,
    max: f32,
}

impl Default for RunningStats {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

impl RunningStats {
    /// Adds an image's pixels.
    pub fn add(&mut self, image: ArrayView2<f32>) {
        for &v in image.iter() {
            let v64 = f64::from(v);
            self.sum += v64;
            self.sum_sq += v64 * v64;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += image.len() as u64;
    }

    /// The statistics of the pixels added so far (`None`: none).
    pub fn summary(&self) -> Option<PixelStats> {
        if self.count == 0 {
            return None;
        }
        let mean = self.sum / self.count as f64;
        let var = (self.sum_sq / self.count as f64 - mean * mean).max(0.0);
        Some(PixelStats {
            pixels: self.count,
            min: self.min,
            max: self.max,
            mean,
            std: var.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcg_formats::mrc::MrcStackWriter;
    use ndarray::array;

    #[test]
    fn running_statistics_equal_a_direct_computation() {
        let mut stats = RunningStats::default();
        assert_eq!(stats.summary(), None);
        stats.add(array![[1.0f32, 2.0], [3.0, 4.0]].view());
        stats.add(array![[-2.0f32]].view());
        // Values 1, 2, 3, 4, −2: mean 8/5, population variance 34/5 − (8/5)² = 4.24.
        let s = stats.summary().unwrap();
        assert_eq!((s.pixels, s.min, s.max), (5, -2.0, 4.0));
        assert!((s.mean - 1.6).abs() < 1e-12, "{}", s.mean);
        assert!((s.std - 4.24f64.sqrt()).abs() < 1e-12, "{}", s.std);
    }

    #[test]
    fn the_text_form_indents_objects_and_numbers_list_items() {
        let report = serde_json::json!({
            "file": "a.star",
            "particles": 3,
            "voxel_size_A": null,
            "shape_zyx": [3, 2, 2],
            "stats": {"min": 0.5, "labels": ["x", "y"]},
            "groups": [{"id": 1}, {"id": 2, "inner": {"box": 16}}],
        });
        let expected = "file: a.star\nparticles: 3\nvoxel_size_A: -\nshape_zyx: 3, 2, 2\n\
                        stats:\n  min: 0.5\n  labels: x, y\n\
                        groups:\n  [0]\n    id: 1\n  [1]\n    id: 2\n    inner:\n      box: 16\n";
        assert_eq!(text(&report), expected);
    }

    #[test]
    fn a_stack_is_described_as_a_map_or_as_a_particle_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("three.mrcs");
        let mut writer = MrcStackWriter::create(&path, 2, 2, 1.5).unwrap();
        for k in 0..3 {
            let image = Array3::from_elem((1, 2, 2), k as f32);
            writer.append(image.view()).unwrap();
        }
        writer.finish().unwrap();

        let FileInfo::Mrc(map) = describe(&path, &Locate::default(), false).unwrap() else {
            panic!("an MRC file is described as a map");
        };
        assert_eq!((map.kind, map.shape_zyx), ("MRC image stack", [3, 2, 2]));
        assert_eq!(map.voxel_size_a, Some(1.5));
        // Pixels 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2: mean 1, variance 2/3.
        let measured = map.measured_stats.unwrap();
        assert_eq!(
            (measured.pixels, measured.min, measured.max),
            (12, 0.0, 2.0)
        );
        assert!((measured.std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let json = serde_json::to_value(FileInfo::Mrc(map)).unwrap();
        assert_eq!(json["type"], "MRC image stack");
        assert_eq!(json["voxel_size_A"], 1.5);

        let FileInfo::Particles(set) = describe(&path, &Locate::default(), true).unwrap() else {
            panic!("--read-images reads a .mrcs stack as a particle set");
        };
        assert_eq!((set.particles, set.with_image, set.stacks), (3, 3, 1));
        assert_eq!(set.optics_groups.len(), 1);
        assert_eq!(set.optics_groups[0].particles, 3);
        assert_eq!(set.star_blocks, None);
        let read = set.images_read.clone().unwrap();
        assert_eq!(read.stats.unwrap().pixels, 12);
        assert!((read.stats.unwrap().mean - 1.0).abs() < 1e-12);
        // Keys as the command prints them; the absent STAR blocks are left out.
        let json = serde_json::to_value(FileInfo::Particles(set)).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys[..3], ["file", "type", "particles"]);
        assert_eq!(keys.last(), Some(&"images_read"));
        assert!(json.get("star_blocks").is_none());
        assert_eq!(json["optics_groups"][0]["pixel_size_A"], 1.5);
    }
}
