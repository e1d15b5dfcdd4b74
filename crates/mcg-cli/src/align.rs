//! `multicryogan align`: align a map to a reference.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use mcg_eval::align::{AlignConfig, align};
use mcg_formats::mrc;
use mcg_physics::Volume;
use serde_json::json;

use crate::util;

/// Align a map to a reference over rotations, both hands (mirror images) and translations, and
/// write the aligned map (trilinear interpolation about the box centre, voxel N/2).
///
/// Global search on Fourier-cropped copies (a near-uniform rotation grid, both hands, the best
/// translation of each rotation by FFT cross-correlation), then Nelder–Mead refinement of the
/// rotation and sub-voxel translation on larger copies up to the full box. The score is the
/// normalised correlation over the whole box.
///
/// The transform maps the input V to aligned(r) = V(F·Rᵀ·(r − t)), r relative to the box
/// centre: first the hand flip F (z → −z, if flipped), then the rotation R (printed as RELION
/// Euler angles rot, tilt, psi: the map is rotated as a projection at that pose rotates it),
/// then the shift t.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan align reconstruction.mrc truth.mrc --out aligned.mrc\n  multicryogan align map.mrc ref.mrc --out aligned.mrc --no-flip --json"
)]
pub struct Args {
    /// Map to align (MRC volume).
    volume: PathBuf,
    /// Reference map (MRC volume) with the same box and voxel size.
    reference: PathBuf,
    /// Where to write the aligned map (MRC, float32, the reference's voxel size).
    #[arg(long, value_name = "MRC")]
    out: PathBuf,
    /// Spacing of the global search's rotation grid, degrees (finer is slower: the count grows
    /// as 1/step³).
    #[arg(long, default_value_t = 10.0, value_name = "DEG", value_parser = crate::util::finite_f64)]
    angular_step: f64,
    /// Box edge (voxels, even) of the Fourier-cropped maps of the global search.
    #[arg(long, default_value_t = 16, value_name = "N")]
    global_box: usize,
    /// Search only the map's own hand (no mirror image).
    #[arg(long)]
    no_flip: bool,
    /// Voxel size in Å of both maps, overriding their headers.
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    apix: Option<f64>,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    util::refuse_overwriting_inputs(
        &[args.volume.clone(), args.reference.clone()],
        &[("--out", &args.out)],
    )?;
    let (volume, reference) = util::read_map_pair(&args.volume, &args.reference, args.apix)?;
    let config = AlignConfig {
        global_box: args.global_box,
        angular_step_deg: args.angular_step,
        allow_flip: !args.no_flip,
        ..AlignConfig::default()
    };
    // (A step outside (0°, 90°] is refused by the alignment itself, naming it.)
    if args.angular_step > 0.0 && args.angular_step <= 90.0 {
        util::need_memory(
            &format!("--angular-step {}", args.angular_step),
            "the global search's grid of rotations",
            mcg_eval::align::search_bytes(&config),
        )?;
    }
    let found = align(&volume, &reference, &config).with_context(|| {
        format!(
            "aligning {} to {}",
            args.volume.display(),
            args.reference.display()
        )
    })?;
    let aligned =
        Volume::new(found.aligned.into_data(), reference.apix()).context("the aligned map")?;
    mrc::write_volume(&args.out, &aligned)?;

    let t = found.transform;
    let apix = f64::from(reference.apix());
    let pose = t.pose();
    let shift_a = t.shift_angstrom(apix);
    if args.json {
        util::print_json(&json!({
            "volume": args.volume,
            "reference": args.reference,
            "output": args.out,
            "euler_deg": {"rot": pose.rot, "tilt": pose.tilt, "psi": pose.psi},
            "rotation_matrix": t.rotation,
            "flipped": t.flipped,
            "shift_A": shift_a,
            "shift_voxels": t.shift_voxels,
            "correlation_before": found.score_before,
            "correlation_after": found.score,
            "voxel_size_A": apix,
            "seconds": start.elapsed().as_secs_f64(),
            "transform": "aligned(r) = V(F·Rᵀ·(r − t)), r from the box centre (voxel N/2): \
                          hand flip F (z → −z) if flipped, then rotation R = RELION A(rot, tilt, psi), \
                          then shift t",
        }))
    } else {
        println!(
            "aligned {} to {}",
            args.volume.display(),
            args.reference.display()
        );
        println!(
            "rotation (RELION Euler angles): rot {:.2}°, tilt {:.2}°, psi {:.2}°",
            pose.rot, pose.tilt, pose.psi
        );
        println!(
            "flipped (mirrored z → −z before rotating): {}",
            if t.flipped { "yes" } else { "no" }
        );
        println!(
            "shift: x {:.2} Å, y {:.2} Å, z {:.2} Å",
            shift_a[0], shift_a[1], shift_a[2]
        );
        println!(
            "correlation: {:.4} before, {:.4} after",
            found.score_before, found.score
        );
        println!("written: {}", args.out.display());
        Ok(())
    }
}
