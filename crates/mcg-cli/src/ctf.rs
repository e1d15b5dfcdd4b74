//! `multicryogan ctf`: each particle's 2D CTF as an image, for inspection.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use mcg_formats::mrc::MrcStackWriter;
use mcg_physics::ctf::ctf_image;
use ndarray::Axis;

use crate::progress::{Monitor as _, Progress};
use crate::util;
use mcg_dataset::input;

/// Write each particle's 2D CTF as one image of an MRC stack, centred: zero frequency at pixel
/// (N/2, N/2), row = ky, column = kx, RELION's sign (+Q0 at zero frequency).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  multicryogan ctf --star particles.star --out ctf.mrcs")]
pub struct Args {
    /// Particle table (STAR, .cs or .h5).
    #[arg(long, value_name = "FILE")]
    star: PathBuf,
    /// Output stack (.mrcs).
    #[arg(long, value_name = "MRCS")]
    out: PathBuf,
    /// Image edge in pixels (default: the optics group's image size).
    #[arg(long = "box", value_name = "N")]
    box_size: Option<usize>,
    #[command(flatten)]
    locate: crate::util::LocateArgs,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    let set = input::metadata(&args.star, &args.locate.get())?;
    let mut inputs = util::stacks_of(&set);
    inputs.push(args.star.clone());
    util::refuse_overwriting_inputs(&inputs, &[("--out", &args.out)])?;
    ensure!(!set.is_empty(), "{}: no particles", args.star.display());
    let first = set.optics_of(0);
    let n = match args.box_size.or(first.image_size) {
        Some(n) => n,
        None => anyhow::bail!(
            "{}: the image size is not recorded (_rlnImageSize); pass --box",
            args.star.display()
        ),
    };
    ensure!(n >= 2 && n % 2 == 0, "--box must be even, got {n}");
    let option = match args.box_size {
        Some(n) => format!("--box {n}"),
        None => format!("{}: _rlnImageSize {n}", args.star.display()),
    };
    util::need_memory(&option, "one CTF image", batch_size_bytes(n))?;
    let folder = args.out.parent().unwrap_or(std::path::Path::new("."));
    util::need_disk(
        &option,
        "the CTF stack",
        util::stack_bytes(set.len(), n),
        folder,
    )?;
    let apix = first.pixel_size;
    let mut writer = MrcStackWriter::create(&args.out, n, n, apix)?;
    let bar = progress.bar(set.len() as u64, "CTFs");
    for i in 0..set.len() {
        progress.check_cancelled()?;
        let group = set.optics_of(i);
        ensure!(
            (group.pixel_size - apix).abs() <= 1e-6 * apix,
            "{}: optics groups have different pixel sizes ({} and {} Å); one stack needs one",
            args.star.display(),
            apix,
            group.pixel_size
        );
        let image = ctf_image(&set.particles[i].ctf, n, apix);
        writer.append(image.view().insert_axis(Axis(0)))?;
        bar.inc(1);
    }
    writer
        .finish()
        .with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish_and_clear();
    println!("{}", args.out.display());
    Ok(())
}

/// Bytes that forming one CTF image of `n`² pixels takes (the image and its frequencies).
fn batch_size_bytes(n: usize) -> f64 {
    (n as f64).powi(2) * 4.0 * 4.0
}
