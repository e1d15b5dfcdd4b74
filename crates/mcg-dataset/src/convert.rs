//! Converting particle sets between STAR+MRCS, HDF5 and (input only) cryoSPARC `.cs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::MrcStackWriter;
use mcg_formats::{ImageRef, ImageSource, star};
use mcg_h5::H5Writer;
use ndarray::Array3;

use crate::guard;
use crate::input::{self, Kind, Locate};
use crate::monitor::{Bar, Monitor};

/// How [`convert`] reads its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSettings {
    /// Images copied per batch (memory is proportional to it).
    pub batch: usize,
    /// Leave out the particles whose images hold a NaN or infinite pixel (every image is read
    /// once first); without it such a particle is an error naming it.
    pub skip_non_finite: bool,
    /// Where the input's images are and its pixel size, when the file does not say.
    pub locate: Locate,
    /// Fourier-crop the images to this box (even, at most the input's): the pixel size grows
    /// by the ratio, recorded in the output's optics groups ([`crate::downsample`]).
    pub box_size: Option<usize>,
}

impl Default for ConvertSettings {
    fn default() -> Self {
        Self {
            batch: 1024,
            skip_non_finite: false,
            locate: Locate::default(),
            box_size: None,
        }
    }
}

/// Converts the particle set `input` into `output`, keeping images bit-exact and metadata
/// complete.
///
/// Input: .star (+ its MRC stacks), .cs (cryoSPARC, input only), .h5/.hdf5, .mrcs or a .txt
/// list of stacks. Output: .star (the images go to one new stack beside it, the output's name
/// with .mrcs) or .h5/.hdf5 (images inside). Every column without a typed meaning is carried
/// along as text. Refuses to write over any input.
pub fn convert(
    input: &Path,
    output: &Path,
    settings: &ConvertSettings,
    progress: &dyn Monitor,
) -> Result<()> {
    ensure!(settings.batch > 0, "--batch must be at least 1");
    let out_kind = input::kind_of(output)?;
    let (mut set, images) = input::particles(input, &settings.locate)?;
    ensure!(
        !set.is_empty(),
        "{}: no particles to convert",
        input.display()
    );
    // The input, the stacks it reads, and (for a STAR output) the stack written beside it.
    let mut inputs = guard::stacks_of(&set);
    inputs.push(input.to_path_buf());
    let written_stack = output.with_extension("mrcs");
    let mut outputs: Vec<(&str, &Path)> = vec![("the output", output)];
    if out_kind == Kind::Star {
        outputs.push(("the output's image stack", &written_stack));
    }
    guard::refuse_overwriting_inputs(&inputs, &outputs)?;
    let images: Box<dyn ImageSource> = if settings.skip_non_finite {
        input::without_non_finite(
            input,
            &mut set,
            images,
            true,
            "--skip-non-finite leaves them out",
            progress,
        )?
        .0
    } else {
        images
    };
    let images = match settings.box_size {
        Some(m) => crate::downsample::downsampled(&mut set, images, m).context("--box")?,
        None => images,
    };
    let n = set.len();
    ensure!(
        images.len() == n,
        "{}: {} particles but {} images",
        input.display(),
        n,
        images.len()
    );
    let out_dir = output
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let bar = progress.bar(n as u64, "converting");
    match out_kind {
        Kind::Star => {
            let stack = output.with_extension("mrcs");
            let mut writer = MrcStackWriter::create(
                &stack,
                images.box_size(),
                images.box_size(),
                images.pixel_size(),
            )?;
            copy_images(
                images.as_ref(),
                settings.batch,
                |batch, _| writer.append(batch.view()).map_err(Into::into),
                bar.as_ref(),
                progress,
            )?;
            writer.finish()?;
            let name = PathBuf::from(stack.file_name().expect("has a name"));
            for (i, p) in set.particles.iter_mut().enumerate() {
                p.image = Some(ImageRef {
                    path: name.clone(),
                    index: i,
                });
            }
            set.base_dir = out_dir;
            star::write_particles(output, &set)?;
        }
        Kind::H5 => {
            let mut writer = H5Writer::create(output, images.box_size(), images.pixel_size(), n)?;
            copy_images(
                images.as_ref(),
                settings.batch,
                |batch, start| writer.write_images(start, batch.view()).map_err(Into::into),
                bar.as_ref(),
                progress,
            )?;
            writer.finish(&set)?;
        }
        other => bail!(
            "{}: cannot write {other:?} particle sets: the output must be .star or .h5",
            output.display()
        ),
    }
    bar.finish();
    Ok(())
}

/// Streams every image through `sink` in batches: `sink(batch, first_index)`.
pub(crate) fn copy_images(
    images: &dyn ImageSource,
    batch: usize,
    mut sink: impl FnMut(&Array3<f32>, usize) -> Result<()>,
    bar: &dyn Bar,
    progress: &dyn Monitor,
) -> Result<()> {
    let (n, b) = (images.len(), images.box_size());
    let mut buffer = Array3::<f32>::zeros((batch.min(n), b, b));
    let mut start = 0;
    while start < n {
        progress.check_cancelled()?;
        let count = batch.min(n - start);
        if buffer.dim().0 != count {
            buffer = Array3::zeros((count, b, b));
        }
        let indices: Vec<usize> = (start..start + count).collect();
        images.read_batch(&indices, buffer.view_mut())?;
        sink(&buffer, start)?;
        bar.inc(count as u64);
        start += count;
    }
    Ok(())
}
