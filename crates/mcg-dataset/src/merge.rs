//! Merging the shards of a synthetic set (`synth` with [`crate::synth::Sharding::One`]) into
//! one particle set over every shard's stack.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::{ParticleSet, mrc, star};
use mcg_h5::H5Writer;
use serde_json::{Value, json};
use tracing::info;

use crate::folder::{
    DataSetDir, GROUND_TRUTH, H5, LANDSCAPE, Manifest, Outputs, SHARDS, STACK, STAR,
    parse_shard_name, shard_name,
};
use crate::guard;
use crate::hint::WithHint;
use crate::monitor::Monitor;

/// Merges OUT/shards/K-of-M into OUT/particles.star, with `h5` the container (its images
/// copied `batch` at a time), and OUT/manifest.json. Checks first that all M shards are there,
/// finished, and made with the same settings. Returns a summary (folder, images, shards).
pub fn merge_shards(out: &Path, h5: bool, batch: usize, progress: &dyn Monitor) -> Result<Value> {
    ensure!(batch > 0, "--batch must be at least 1");
    let folder = DataSetDir::new(out);
    let shards_dir = folder.shards();
    let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(&shards_dir)
        .with_context(|| format!("reading {}", shards_dir.display()))
        .with_hint("run multicryogan synth --shard K/M --out OUT first")?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((k, m)) = parse_shard_name(&name) {
            found.push((k, m, entry.path()));
        }
    }
    found.sort();
    let Some(&(_, m, _)) = found.first() else {
        bail!("{}: no shard folders (K-of-M)", shards_dir.display());
    };
    if let Some((_, other, path)) = found.iter().find(|(_, mm, _)| *mm != m) {
        bail!(
            "{}: a shard of {other} parts beside shards of {m}; remove the stale folders",
            path.display()
        );
    }
    let mut manifests: Vec<Manifest> = Vec::new();
    for k in 1..=m {
        let path = folder.shard(k, m).manifest();
        let manifest = folder.shard(k, m).read_manifest().with_context(|| {
            format!(
                "shard {k}/{m} is missing or unfinished: no readable {}",
                path.display()
            )
        })?;
        if let Some(first) = manifests.first()
            && manifest.settings != first.settings
        {
            bail!(
                "{}: shard {k}/{m} was made with other settings than shard 1/{m}",
                path.display()
            );
        }
        manifests.push(manifest);
    }
    let mut merged: Option<ParticleSet> = None;
    for k in 1..=m {
        let dir = folder.shard(k, m);
        // Opening the images checks each shard's stack (a truncated one is refused) before
        // anything is written.
        let (mut set, _) = crate::input::particles(&dir.star(), &Default::default())?;
        let rel = PathBuf::from(SHARDS).join(shard_name(k, m)).join(STACK);
        for p in &mut set.particles {
            if let Some(image) = &mut p.image {
                image.path = rel.clone();
            }
        }
        match &mut merged {
            None => merged = Some(set),
            Some(all) => {
                all.particles.extend(set.particles);
                for ((label, values), (other, more)) in all.extra.iter_mut().zip(set.extra) {
                    ensure!(
                        *label == other,
                        "shard {k}/{m}: column {other} where {label} was expected"
                    );
                    values.extend(more);
                }
            }
        }
    }
    let Some(mut set) = merged else {
        bail!("{}: no shard folders (K-of-M)", shards_dir.display());
    };
    set.base_dir = out.to_path_buf();
    let notes = std::fs::read_to_string(folder.shard(1, m).star())?
        .lines()
        .take_while(|l| l.starts_with("# ") && !l.starts_with("# version"))
        .map(|l| l[2..].to_string())
        .collect::<Vec<_>>();
    let star_path = folder.star();
    let n = set.len();
    let mut outputs = Outputs {
        star: STAR.into(),
        stacks: Some(format!("{SHARDS}/K-of-M/{STACK}")),
        ground_truth: Some(GROUND_TRUTH.into()),
        landscape: Some(LANDSCAPE.into()),
        ..Outputs::default()
    };
    // The container first, then the STAR file, then the manifest: a merge that fails leaves
    // none of the three new.
    if h5 {
        let images: Box<dyn mcg_formats::ImageSource> =
            Box::new(mcg_formats::stack_source::StackImages::open(&set)?);
        let path = folder.h5();
        let mut writer = H5Writer::create(&path, images.box_size(), images.pixel_size(), n)?;
        add_ground_truth(&mut writer, &folder)?;
        let bar = progress.bar(n as u64, "container");
        crate::convert::copy_images(
            images.as_ref(),
            batch,
            |b, start| writer.write_images(start, b.view()).map_err(Into::into),
            bar.as_ref(),
            progress,
        )?;
        bar.finish();
        writer.finish(&set)?;
        outputs.h5 = Some(H5.into());
    }
    star::write_particles_with_notes(&star_path, &set, &notes)?;
    let wall_seconds = manifests.iter().map(|m| m.wall_seconds).sum::<f64>();
    let mut manifest = manifests.swap_remove(0);
    manifest.shard = None;
    manifest.shards = Some(m);
    manifest.outputs = outputs;
    manifest.class_counts = crate::synth::class_counts(&set);
    manifest.wall_seconds = wall_seconds;
    guard::write_json_atomic(&folder.manifest(), &manifest)?;
    info!(
        images = n,
        shards = m,
        "merged into {}",
        star_path.display()
    );
    Ok(json!({"out": out, "images": n, "shards": m}))
}

/// Adds the maps of OUT/ground_truth (as listed in its states.json) to a container.
pub(crate) fn add_ground_truth(writer: &mut H5Writer, out: &DataSetDir) -> Result<()> {
    let record = out.states_record();
    let states = out
        .read_states_record()
        .with_context(|| format!("{}: no list of ground-truth states", record.display()))?;
    for name in &states.states {
        writer.write_ground_truth_volume(name, &mrc::read_volume(&out.truth_map(name), None)?)?;
    }
    Ok(())
}
