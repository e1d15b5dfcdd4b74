//! Checks made before work is done, and the sizes they weigh: an output never overwrites an
//! input, and memory and disk are measured before they are spent.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::hint::WithHint;

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    Ok(mcg_fsio::write_atomic(
        path,
        (serde_json::to_string_pretty(value)? + "\n").as_bytes(),
    )?)
}

/// A path as it will be named once it exists: canonical when it exists, else its canonical
/// folder joined with its name (so that `./a/../b.mrc` and `b.mrc` compare equal).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Refuses, before anything is written, to write any of `outputs` over one of `inputs` (the
/// files the command reads, including the image stacks a metadata file points at): an output
/// must never destroy an input. An output may be a folder the command fills or clears, which
/// must hold no input. The error names both.
pub fn refuse_overwriting_inputs(inputs: &[PathBuf], outputs: &[(&str, &Path)]) -> Result<()> {
    let inputs: Vec<(PathBuf, &PathBuf)> = inputs.iter().map(|p| (resolved(p), p)).collect();
    for (what, out) in outputs {
        let target = resolved(out);
        if let Some((_, input)) = inputs.iter().find(|(r, _)| r.starts_with(&target)) {
            anyhow::bail!(
                "{what} {} would overwrite the input {}; choose another output name",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// [`refuse_overwriting_inputs`] for the files `names` that a command writes in its folder
/// `out`, each called `what` in the error ("the output", "the run's").
pub fn refuse_writing_over_inputs<N: AsRef<Path>>(
    inputs: &[PathBuf],
    out: &Path,
    names: impl IntoIterator<Item = N>,
    what: &str,
) -> Result<()> {
    let outputs: Vec<PathBuf> = names.into_iter().map(|n| out.join(n)).collect();
    let labelled: Vec<(&str, &Path)> = outputs.iter().map(|p| (what, p.as_path())).collect();
    refuse_overwriting_inputs(inputs, &labelled)
}

/// Refuses, before anything is allocated, `bytes` of memory for `purpose` that `option` (the
/// flag and its value) implies when the machine does not have them.
pub fn need_memory(option: &str, purpose: &str, bytes: f64) -> Result<()> {
    mcg_fsio::budget::check_memory(option, purpose, bytes)
        .map_err(anyhow::Error::msg)
        .with_hint("choose a smaller value, or run on a machine with more memory")
}

/// Refuses, before anything is written, `bytes` of output in `folder` that `option` implies
/// when its file system has less free.
pub fn need_disk(option: &str, purpose: &str, bytes: f64, folder: &Path) -> Result<()> {
    mcg_fsio::budget::check_disk(option, purpose, bytes, folder)
        .map_err(anyhow::Error::msg)
        .with_hint("free some space, write elsewhere, or choose a smaller value")
}

/// Bytes of an image stack of `count` images of `n`² float32 pixels.
pub fn stack_bytes(count: usize, n: usize) -> f64 {
    count as f64 * (n as f64).powi(2) * 4.0 + 1024.0
}

/// Bytes a Fourier projector of an `n`³ volume holds: the volume and its 3D transform,
/// `oversampling` times finer (complex float32).
pub fn projector_bytes(n: usize, oversampling: usize) -> f64 {
    let n = n as f64;
    4.0 * n.powi(3) + 8.0 * (oversampling as f64 * n).powi(3)
}

/// Bytes of `batch` images of `n`² pixels as the simulators form them (clean image, spectrum
/// and noisy image per image, and the batch being written meanwhile).
pub fn batch_bytes(batch: usize, n: usize) -> f64 {
    batch as f64 * (n as f64).powi(2) * 4.0 * 6.0
}

/// Refuses a `--calibration-images K` whose clean images at an `n`² box do not fit in memory.
pub fn need_calibration(k: usize, n: usize) -> Result<()> {
    need_memory(
        &format!("--calibration-images {k}"),
        "the clean calibration images",
        batch_bytes(k.max(1), n),
    )
}

/// The image stacks a particle set reads, each once.
pub fn stacks_of(set: &mcg_formats::ParticleSet) -> Vec<PathBuf> {
    let mut stacks: Vec<PathBuf> = set
        .particles
        .iter()
        .filter_map(|p| p.image.as_ref().map(|i| set.resolve(i)))
        .collect();
    stacks.sort();
    stacks.dedup();
    stacks
}
