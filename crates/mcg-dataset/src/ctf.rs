//! Each particle's 2D CTF as an image, for inspection (the `ctf` command): one image per
//! particle of an MRC stack, centred — zero frequency at pixel (N/2, N/2), row = ky, column =
//! kx, RELION's sign (+Q0 at zero frequency) — computed by [`mcg_physics::ctf::ctf_image`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::MrcStackWriter;
use mcg_physics::ctf::ctf_image;
use ndarray::Axis;

use crate::guard::{need_disk, need_memory, refuse_overwriting_inputs, stack_bytes, stacks_of};
use crate::input::{self, Locate};
use crate::monitor::Monitor;

/// The settings of [`write_ctf_stack`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CtfStackSettings {
    /// The particle table (STAR, .cs or .h5).
    pub star: PathBuf,
    /// The stack to write (.mrcs); never one of the set's files.
    pub out: PathBuf,
    /// Image edge in pixels (even); `None`: the first optics group's image size.
    pub box_size: Option<usize>,
    /// Where the set's images and pixel size are found.
    pub locate: Locate,
}

/// Writes the CTF of every particle of `settings.star` to `settings.out`, after checking that
/// the stack fits on the disk. All particles must share one pixel size. `monitor` counts the
/// particles and stops the writing (leaving no file) when asked.
pub fn write_ctf_stack(settings: &CtfStackSettings, monitor: &dyn Monitor) -> Result<()> {
    let star = &settings.star;
    let set = input::metadata(star, &settings.locate)?;
    let mut inputs = stacks_of(&set);
    inputs.push(star.clone());
    refuse_overwriting_inputs(&inputs, &[("--out", &settings.out)])?;
    ensure!(!set.is_empty(), "{}: no particles", star.display());
    let first = set.optics_of(0);
    let n = match settings.box_size.or(first.image_size) {
        Some(n) => n,
        None => bail!(
            "{}: the image size is not recorded (_rlnImageSize); pass --box",
            star.display()
        ),
    };
    ensure!(n >= 2 && n % 2 == 0, "--box must be even, got {n}");
    let option = match settings.box_size {
        Some(n) => format!("--box {n}"),
        None => format!("{}: _rlnImageSize {n}", star.display()),
    };
    need_memory(&option, "one CTF image", image_bytes(n))?;
    let folder = settings.out.parent().unwrap_or(Path::new("."));
    need_disk(&option, "the CTF stack", stack_bytes(set.len(), n), folder)?;
    let apix = first.pixel_size;
    let mut writer = MrcStackWriter::create(&settings.out, n, n, apix)?;
    let bar = monitor.bar(set.len() as u64, "CTFs");
    for i in 0..set.len() {
        monitor.check_cancelled()?;
        let group = set.optics_of(i);
        ensure!(
            (group.pixel_size - apix).abs() <= 1e-6 * apix,
            "{}: optics groups have different pixel sizes ({} and {} Å); one stack needs one",
            star.display(),
            apix,
            group.pixel_size
        );
        let image = ctf_image(&set.particles[i].ctf, n, apix);
        writer.append(image.view().insert_axis(Axis(0)))?;
        bar.inc(1);
    }
    writer
        .finish()
        .with_context(|| format!("writing {}", settings.out.display()))?;
    bar.finish();
    Ok(())
}

/// Bytes that forming one CTF image of `n`² pixels takes (the image and its frequencies).
fn image_bytes(n: usize) -> f64 {
    (n as f64).powi(2) * 4.0 * 4.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::Silent;
    use crate::project::{ProjectSettings, project};
    use mcg_formats::mrc::MrcStack;

    #[test]
    fn each_particles_ctf_is_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sim = ProjectSettings::new(3, dir.path().join("sim"));
        sim.box_size = 16;
        sim.ctf = true;
        project(&sim, &Silent::new()).unwrap();
        let star = dir.path().join("sim/particles.star");
        let settings = CtfStackSettings {
            star: star.clone(),
            out: dir.path().join("ctf.mrcs"),
            box_size: Some(8),
            ..CtfStackSettings::default()
        };
        write_ctf_stack(&settings, &Silent::new()).unwrap();
        let set = input::metadata(&star, &Locate::default()).unwrap();
        let stack = MrcStack::open(&settings.out).unwrap();
        assert_eq!((stack.len(), stack.image_shape()), (3, (8, 8)));
        for (k, particle) in set.particles.iter().enumerate() {
            let mut image = ndarray::Array2::<f32>::zeros((8, 8));
            stack.read_into(k, image.view_mut()).unwrap();
            let expected = ctf_image(&particle.ctf, 8, set.optics_of(k).pixel_size);
            assert_eq!(image, expected, "particle {k}");
        }
        // The defoci differ, so the images do: the order matters and is kept.
        assert_ne!(
            ctf_image(&set.particles[0].ctf, 8, 5.0),
            ctf_image(&set.particles[1].ctf, 8, 5.0)
        );

        let odd = CtfStackSettings {
            box_size: Some(7),
            out: dir.path().join("odd.mrcs"),
            ..settings.clone()
        };
        let err = write_ctf_stack(&odd, &Silent::new()).unwrap_err();
        assert_eq!(err.to_string(), "--box must be even, got 7");
        assert!(!odd.out.exists());
        let over = CtfStackSettings {
            out: dir.path().join("sim/particles.mrcs"),
            ..settings
        };
        let err = format!("{:#}", write_ctf_stack(&over, &Silent::new()).unwrap_err());
        assert!(err.contains("--out"), "{err}");
    }
}
