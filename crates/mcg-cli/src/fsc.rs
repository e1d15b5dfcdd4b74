//! `multicryogan fsc`: the Fourier shell correlation of two maps ([`mcg_report::maps::fsc_maps`]).

use std::path::PathBuf;

use anyhow::Result;
use mcg_eval::fsc::Binning;
use mcg_report::maps::{FscSettings, MapMask, fsc_maps};

use crate::util;

/// Fourier shell correlation (FSC) of two maps: the curve, the resolution where it first falls
/// below 0.5 and 0.143, and AreaFSC.
///
/// FSC(shell) = Re Σ F₁·conj(F₂) / √(Σ|F₁|²·Σ|F₂|²) over the Fourier coefficients of each
/// shell. A resolution is the first crossing below the threshold, linearly interpolated between
/// the two shells around it, in Å and as a fraction of Nyquist (1/(2·apix)); "not reached" (null
/// in JSON) when the curve never falls below it. AreaFSC is the mean FSC over shells 1 … last:
/// the area under the curve against frequency as a fraction of Nyquist (1 for identical maps,
/// about 0 for unrelated ones).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan fsc half1.mrc half2.mrc\n  multicryogan fsc map.mrc truth.mrc --mask-radius 60 --json --plot fsc.png\n  multicryogan fsc map.mrc truth.mrc --mask mask.mrc --binning cryodrgn"
)]
pub struct Args {
    /// First map (MRC volume).
    map1: PathBuf,
    /// Second map (MRC volume) with the same box and voxel size.
    map2: PathBuf,
    /// Soft mask (MRC volume of the maps' box, values usually in [0, 1]) multiplied into both
    /// maps before their Fourier transforms.
    #[arg(long, value_name = "MRC", conflicts_with = "mask_radius")]
    mask: Option<PathBuf>,
    /// Spherical hard mask: keep the voxels within this radius (Å) of the box centre (voxel N/2)
    /// in both maps, zero the rest. A mask (this or --mask) must keep at least 8·N voxels of an
    /// N³ box (16 per shell out to Nyquist), else the FSC is refused.
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    mask_radius: Option<f64>,
    /// Shells: `standard` (shell i = radii rounding to i, i = 0 … N/2, at i/(N·apix) Å⁻¹) or
    /// `cryodrgn` (cryoDRGN and CryoBench: N/2 points, point 0 = 1, point i = radii in
    /// [i − 1, i), at i/(N·apix) Å⁻¹), to compare numbers with theirs.
    #[arg(long, default_value = "standard", value_name = "standard|cryodrgn")]
    binning: Binning,
    /// Voxel size in Å of both maps (and the mask), overriding their headers.
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    apix: Option<f64>,
    /// Also draw the curve, with the 0.5 and 0.143 thresholds, into this PNG file.
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Print JSON on stdout instead of a table: frequency_per_A, fsc, resolution_A (keys "0.5"
    /// and "0.143"), area, and more.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mask = match (args.mask, args.mask_radius) {
        (Some(path), _) => Some(MapMask::File(path)),
        (None, Some(radius_a)) => Some(MapMask::Sphere { radius_a }),
        (None, None) => None,
    };
    let settings = FscSettings {
        map1: args.map1,
        map2: args.map2,
        mask,
        binning: args.binning,
        apix: args.apix,
        plot: args.plot,
    };
    let result = fsc_maps(&settings)?;
    if args.json {
        util::print_json(&result.to_json())
    } else {
        print!("{result}");
        Ok(())
    }
}
