//! `multicryogan fsc`: the Fourier shell correlation of two maps.

use std::path::PathBuf;

use anyhow::{Result, anyhow, ensure};
use mcg_eval::EvalError;
use mcg_eval::fsc::{Binning, FscConfig, FscCurve, Mask, THRESHOLDS, fsc};
use mcg_formats::mrc;
use serde_json::{Value, json};

use crate::util::{self, WithHint};

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
    let mut inputs = vec![args.map1.clone(), args.map2.clone()];
    inputs.extend(args.mask.clone());
    if let Some(png) = &args.plot {
        util::refuse_overwriting_inputs(&inputs, &[("--plot", png)])?;
    }
    let (a, b) = util::read_map_pair(&args.map1, &args.map2, args.apix)?;
    let mask = match (&args.mask, args.mask_radius) {
        (Some(path), _) => {
            let mask = mrc::read_volume(path, args.apix.or(Some(f64::from(a.apix()))))
                .with_hint("the mask must be an MRC volume of the maps' box")?;
            ensure!(
                mask.box_size() == a.box_size(),
                "{}: box: {}³ voxels, expected the maps' {}³",
                path.display(),
                mask.box_size(),
                a.box_size()
            );
            Some(Mask::Map(mask.into_data()))
        }
        (None, Some(radius_a)) => {
            ensure!(
                radius_a.is_finite() && radius_a > 0.0,
                "--mask-radius {radius_a}: expected a radius in Å above 0"
            );
            Some(Mask::Sphere { radius_a })
        }
        (None, None) => None,
    };
    let config = FscConfig {
        binning: args.binning,
        mask,
    };
    let curve = fsc(&a, &b, &config).map_err(|e| match e {
        // The library knows a mask, the user gave an option: name it.
        EvalError::MaskTooSmall { .. } => match (&args.mask, args.mask_radius) {
            (Some(path), _) => anyhow!("--mask {}: {e}", path.display()),
            (None, Some(r)) => anyhow!("--mask-radius {r}: {e}"),
            (None, None) => anyhow!(e),
        },
        other => anyhow!(other),
    })?;
    if let Some(png) = &args.plot {
        let name = |p: &std::path::Path| {
            p.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        };
        let title = format!("FSC of {} and {}", name(&args.map1), name(&args.map2));
        mcg_report::plot::fsc_plot(png, &title, &[(curve.binning.name().to_string(), &curve)])?;
    }
    let report = report(&args, &curve);
    if args.json {
        util::print_json(&report)
    } else {
        print_table(&args, &curve);
        Ok(())
    }
}

fn report(args: &Args, curve: &FscCurve) -> Value {
    let crossings = |field: fn(&mcg_eval::Resolution) -> f64| {
        let mut map = serde_json::Map::new();
        for t in THRESHOLDS {
            map.insert(
                t.to_string(),
                json!(curve.resolution(t).as_ref().map(field)),
            );
        }
        Value::Object(map)
    };
    json!({
        "frequency_per_A": curve.frequency_per_a,
        "fsc": curve.fsc,
        "resolution_A": crossings(|r| r.angstrom),
        "area": curve.area(),
        "resolution_nyquist_fraction": crossings(|r| r.nyquist_fraction),
        "nyquist_fraction": curve.nyquist_fraction(),
        "shell_voxels": curve.voxels,
        "binning": curve.binning.name(),
        "mask": mask_description(args),
        "box_size": curve.box_size,
        "voxel_size_A": curve.apix,
        "map1": args.map1,
        "map2": args.map2,
    })
}

fn mask_description(args: &Args) -> Value {
    match (&args.mask, args.mask_radius) {
        (Some(path), _) => json!({"file": path}),
        (None, Some(r)) => json!({"sphere_radius_A": r}),
        (None, None) => Value::Null,
    }
}

fn print_table(args: &Args, curve: &FscCurve) {
    println!("FSC of {} and {}", args.map1.display(), args.map2.display());
    println!(
        "box {}³, voxel {} Å, {} binning, mask: {}",
        curve.box_size,
        curve.apix,
        curve.binning.name(),
        match mask_description(args) {
            Value::Null => "none".to_string(),
            other => other.to_string(),
        }
    );
    println!(
        "{:>5} {:>10} {:>9} {:>8} {:>8}",
        "shell", "1/Å", "Å", "Nyquist", "FSC"
    );
    for (i, ((f, nyq), c)) in curve
        .frequency_per_a
        .iter()
        .zip(curve.nyquist_fraction())
        .zip(&curve.fsc)
        .enumerate()
    {
        let res = if *f > 0.0 {
            format!("{:.2}", 1.0 / f)
        } else {
            "inf".into()
        };
        println!("{i:>5} {f:>10.5} {res:>9} {nyq:>8.3} {c:>8.4}");
    }
    for t in THRESHOLDS {
        match curve.resolution(t) {
            Some(r) => println!(
                "resolution at FSC {t}: {:.2} Å ({:.3} of Nyquist)",
                r.angstrom, r.nyquist_fraction
            ),
            None => println!(
                "resolution at FSC {t}: not reached (the FSC stays above {t} up to the last shell)"
            ),
        }
    }
    println!("AreaFSC: {:.4}", curve.area());
}
