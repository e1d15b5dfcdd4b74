//! `multicryogan info`: what a file holds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use mcg_formats::mrc::{self, MrcStack};
use mcg_formats::star::read_star;
use mcg_formats::{ImageSource, ParticleSet};
use ndarray::{Array3, ArrayView2};
use serde_json::{Value, json};

use crate::util;
use mcg_dataset::input::{self, Kind};

/// Say what a file holds. MRC maps and stacks: shape, mode, voxel size, origin, header and
/// measured statistics. Particle sets (STAR, cryoSPARC .cs, HDF5, .mrcs, .txt stack lists):
/// particle count, optics groups, box, pixel size, and the columns present.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan info map.mrc\n  multicryogan info particles.star --json\n  multicryogan info particles.star --read-images"
)]
pub struct Args {
    /// The file.
    file: PathBuf,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// For particle sets: read every image (in batches, never all at once) and report pixel
    /// statistics, the time taken and the peak memory.
    #[arg(long)]
    read_images: bool,
    #[command(flatten)]
    locate: crate::util::LocateArgs,
}

pub fn run(args: Args) -> Result<()> {
    let report = match input::kind_of(&args.file)? {
        Kind::Mrc if !args.read_images || !is_stack_name(&args.file) => mrc_info(&args.file)?,
        _ => particles_info(&args, &args.file)?,
    };
    if args.json {
        util::print_json(&report)
    } else {
        print_text(&report, 0);
        Ok(())
    }
}

fn is_stack_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mrcs"))
}

fn mrc_info(path: &Path) -> Result<Value> {
    let header = mrc::read_header(path)?;
    let (nz, ny, nx) = header.shape();
    // Measured statistics, streamed section by section.
    let stack = MrcStack::open(path)?;
    let mut section = ndarray::Array2::<f32>::zeros((ny, nx));
    let mut stats = Stats::default();
    for z in 0..stack.len() {
        stack.read_into(z, section.view_mut())?;
        stats.add(section.view());
    }
    Ok(json!({
        "file": path,
        "type": if header.is_stack() { "MRC image stack" } else { "MRC volume" },
        "shape_zyx": [nz, ny, nx],
        "mode": format!("{:?} ({})", header.mode, header.mode.code()),
        "endian": format!("{:?}", header.endian),
        "voxel_size_A": header.voxel_size(),
        "cell_A": header.cell,
        "origin_A": header.origin,
        "ispg": header.ispg,
        "nversion": header.nversion,
        "map_word": String::from_utf8_lossy(&header.map).into_owned(),
        "header_stats": {"min": header.dmin, "max": header.dmax, "mean": header.dmean, "rms": header.rms},
        "measured_stats": stats.json(),
        "labels": header.labels,
    }))
}

fn particles_info(args: &Args, path: &Path) -> Result<Value> {
    let kind = input::kind_of(path)?;
    let start = Instant::now();
    let (set, images) = if args.read_images {
        let (set, images) = input::particles(path, &args.locate.get())?;
        (set, Some(images))
    } else {
        (input::metadata(path, &args.locate.get())?, None)
    };
    let mut report = set_summary(path, &set);
    if kind == Kind::Star {
        let star = read_star(path)?;
        let blocks: Vec<Value> = star
            .blocks
            .iter()
            .map(|b| {
                json!({
                    "block": format!("data_{}", b.name),
                    "rows": b.table.as_ref().map_or(0, |t| t.len()),
                    "columns": b.table.as_ref().map(|t| t.labels.clone()).unwrap_or_default(),
                })
            })
            .collect();
        report["star_blocks"] = json!(blocks);
    }
    if let Some(images) = images {
        let stats = read_all(images.as_ref())?;
        report["images_read"] = json!({
            "stats": stats.json(),
            "seconds": start.elapsed().as_secs_f64(),
            "peak_rss_mib": util::peak_rss_mib(),
        });
    }
    Ok(report)
}

fn set_summary(path: &Path, set: &ParticleSet) -> Value {
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
    let stacks: std::collections::BTreeSet<PathBuf> = set
        .particles
        .iter()
        .filter_map(|p| p.image.as_ref())
        .map(|r| set.resolve(r))
        .collect();
    json!({
        "file": path,
        "type": "particle set",
        "particles": n,
        "with_image": with_image,
        "with_pose": with_pose,
        "with_shift": with_shift,
        "with_class": with_class,
        "stacks": stacks.len(),
        "optics_groups": set.optics.iter().map(|g| json!({
            "id": g.id,
            "name": g.name,
            "pixel_size_A": g.pixel_size,
            "box": g.image_size,
            "voltage_kV": g.voltage,
            "cs_mm": g.cs,
            "amplitude_contrast": g.amplitude_contrast,
            "particles": set.particles.iter().filter(|p| set.optics[p.optics_group].id == g.id).count(),
        })).collect::<Vec<_>>(),
        "columns": columns,
    })
}

/// Reads every image in batches of 1024, accumulating statistics.
fn read_all(images: &dyn ImageSource) -> Result<Stats> {
    let (n, b) = (images.len(), images.box_size());
    let batch = 1024.min(n.max(1));
    let mut buffer = Array3::<f32>::zeros((batch, b, b));
    let mut stats = Stats::default();
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

/// Running pixel statistics (f64 sums).
#[derive(Debug)]
struct Stats {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f32,
    max: f32,
}

impl Default for Stats {
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

impl Stats {
    fn add(&mut self, image: ArrayView2<f32>) {
        for &v in image.iter() {
            let v64 = f64::from(v);
            self.sum += v64;
            self.sum_sq += v64 * v64;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += image.len() as u64;
    }

    fn json(&self) -> Value {
        if self.count == 0 {
            return Value::Null;
        }
        let mean = self.sum / self.count as f64;
        let var = (self.sum_sq / self.count as f64 - mean * mean).max(0.0);
        json!({"pixels": self.count, "min": self.min, "max": self.max, "mean": mean, "std": var.sqrt()})
    }
}

/// Prints a JSON report as indented `key: value` lines.
fn print_text(value: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(_) => {
                        println!("{pad}{k}:");
                        print_text(v, indent + 1);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                        println!("{pad}{k}:");
                        for (i, item) in items.iter().enumerate() {
                            println!("{pad}  [{i}]");
                            print_text(item, indent + 2);
                        }
                    }
                    _ => println!("{pad}{k}: {}", scalar(v)),
                }
            }
        }
        other => println!("{pad}{}", scalar(other)),
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
