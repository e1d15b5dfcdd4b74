//! `multicryogan align`: align a map to a reference ([`mcg_report::maps::align_maps`]).

use std::path::PathBuf;

use anyhow::Result;
use mcg_eval::align::AlignConfig;
use mcg_report::maps::{AlignSettings, align_maps};

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
    let settings = AlignSettings {
        volume: args.volume,
        reference: args.reference,
        out: args.out,
        config: AlignConfig {
            global_box: args.global_box,
            angular_step_deg: args.angular_step,
            allow_flip: !args.no_flip,
            ..AlignConfig::default()
        },
        apix: args.apix,
    };
    let found = align_maps(&settings)?;
    if args.json {
        util::print_json(&found.to_json())
    } else {
        print!("{found}");
        Ok(())
    }
}
