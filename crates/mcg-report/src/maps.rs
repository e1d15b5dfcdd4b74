//! Two map files compared, as the `fsc` and `align` commands do it: [`read_map_pair`] (two MRC
//! maps that can be compared: same box and voxel size, some signal), [`fsc_maps`] (their
//! Fourier shell correlation, optionally masked and plotted: [`MapFsc`]) and [`align_maps`] (a
//! map aligned to a reference and written: [`MapAlignment`]). Each result gives the command's
//! JSON (`to_json`) and its text (`Display`). The numbers are `mcg-eval`'s.
//!
//! Settings come from a command's options, so errors name the option (`--mask-radius`,
//! `--angular-step`, `--plot`, `--out`) along with the file and what was expected.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use mcg_dataset::guard::{need_memory, refuse_overwriting_inputs};
use mcg_dataset::hint::WithHint;
use mcg_eval::EvalError;
use mcg_eval::align::{AlignConfig, Transform, align};
use mcg_eval::fsc::{Binning, FscConfig, FscCurve, Mask, THRESHOLDS, fsc};
use mcg_formats::mrc;
use mcg_physics::Volume;
use serde_json::{Value, json};

/// Reads two MRC maps that are to be compared: both cubic with an even box, of the same box and
/// voxel size (`apix` in Å overrides both headers). Errors name the file, the field and what
/// was expected.
pub fn read_map_pair(first: &Path, second: &Path, apix: Option<f64>) -> Result<(Volume, Volume)> {
    let read = |path: &Path| {
        mrc::read_volume(path, apix).with_hint(
            "maps must be cubic MRC volumes with an even box; --apix sets the voxel size when a \
             header lacks it",
        )
    };
    let (a, b) = (read(first)?, read(second)?);
    for (map, path) in [(&a, first), (&b, second)] {
        let data = map.data();
        let v0 = data.iter().next().copied().unwrap_or(0.0);
        if data.iter().all(|&v| v == v0) {
            return Err(anyhow!(
                "{}: every voxel is {v0}, expected a map with some signal (a constant map has \
                 no Fourier shell correlation)",
                path.display()
            ));
        }
    }
    if a.box_size() != b.box_size() {
        return Err(anyhow!(
            "{}: box: {}³ voxels, expected the {}³ box of {}",
            second.display(),
            b.box_size(),
            a.box_size(),
            first.display()
        ))
        .with_hint("resample one map onto the other's grid first (same box and voxel size)");
    }
    let (pa, pb) = (f64::from(a.apix()), f64::from(b.apix()));
    if (pa - pb).abs() > 1e-4 * pa.max(pb) {
        return Err(anyhow!(
            "{}: voxel size: {pb} Å, expected the {pa} Å of {}",
            second.display(),
            first.display()
        ))
        .with_hint(
            "resample one map onto the other's grid first; --apix overrides both headers when one \
             is wrong",
        );
    }
    Ok((a, b))
}

/// The mask of [`fsc_maps`], applied to both maps before their transforms.
#[derive(Debug, Clone, PartialEq)]
pub enum MapMask {
    /// A soft mask: an MRC volume of the maps' box (`--mask`).
    File(PathBuf),
    /// The voxels within this radius (Å) of the box centre, voxel N/2 (`--mask-radius`).
    Sphere {
        /// The radius, Å (above 0).
        radius_a: f64,
    },
}

/// The settings of [`fsc_maps`].
#[derive(Debug, Clone, PartialEq)]
pub struct FscSettings {
    /// The first map (MRC volume).
    pub map1: PathBuf,
    /// The second map, of the first's box and voxel size.
    pub map2: PathBuf,
    /// The mask, if any.
    pub mask: Option<MapMask>,
    /// The shells.
    pub binning: Binning,
    /// Voxel size in Å of both maps and the mask, overriding their headers.
    pub apix: Option<f64>,
    /// Where to draw the curve (PNG), if anywhere.
    pub plot: Option<PathBuf>,
}

/// The FSC of two map files: the settings' maps and mask, and the curve.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFsc {
    /// The first map.
    pub map1: PathBuf,
    /// The second map.
    pub map2: PathBuf,
    /// The mask applied to both.
    pub mask: Option<MapMask>,
    /// The curve.
    pub curve: FscCurve,
}

/// The FSC of two MRC maps (read with [`read_map_pair`]), masked as `settings` say, and the
/// curve drawn into `settings.plot` (never over an input). A mask that keeps too few voxels is
/// refused naming its option.
pub fn fsc_maps(settings: &FscSettings) -> Result<MapFsc> {
    let mut inputs = vec![settings.map1.clone(), settings.map2.clone()];
    if let Some(MapMask::File(path)) = &settings.mask {
        inputs.push(path.clone());
    }
    if let Some(png) = &settings.plot {
        refuse_overwriting_inputs(&inputs, &[("--plot", png)])?;
    }
    let (a, b) = read_map_pair(&settings.map1, &settings.map2, settings.apix)?;
    let mask = match &settings.mask {
        Some(MapMask::File(path)) => {
            let mask = mrc::read_volume(path, settings.apix.or(Some(f64::from(a.apix()))))
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
        &Some(MapMask::Sphere { radius_a }) => {
            ensure!(
                radius_a.is_finite() && radius_a > 0.0,
                "--mask-radius {radius_a}: expected a radius in Å above 0"
            );
            Some(Mask::Sphere { radius_a })
        }
        None => None,
    };
    let config = FscConfig {
        binning: settings.binning,
        mask,
    };
    let curve = fsc(&a, &b, &config).map_err(|e| match e {
        // The library knows a mask, the user gave an option: name it.
        EvalError::MaskTooSmall { .. } => match &settings.mask {
            Some(MapMask::File(path)) => anyhow!("--mask {}: {e}", path.display()),
            Some(MapMask::Sphere { radius_a }) => anyhow!("--mask-radius {radius_a}: {e}"),
            None => anyhow!(e),
        },
        other => anyhow!(other),
    })?;
    if let Some(png) = &settings.plot {
        let name = |p: &Path| {
            p.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        };
        let title = format!(
            "FSC of {} and {}",
            name(&settings.map1),
            name(&settings.map2)
        );
        crate::plot::fsc_plot(png, &title, &[(curve.binning.name().to_string(), &curve)])?;
    }
    Ok(MapFsc {
        map1: settings.map1.clone(),
        map2: settings.map2.clone(),
        mask: settings.mask.clone(),
        curve,
    })
}

impl MapFsc {
    /// The curve, its crossings and area, and what was compared, as the `fsc` command's JSON:
    /// frequency_per_A, fsc, resolution_A (keys "0.5" and "0.143"; null: not reached), area,
    /// and more.
    pub fn to_json(&self) -> Value {
        let curve = &self.curve;
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
            "mask": self.mask_json(),
            "box_size": curve.box_size,
            "voxel_size_A": curve.apix,
            "map1": self.map1,
            "map2": self.map2,
        })
    }

    fn mask_json(&self) -> Value {
        match &self.mask {
            Some(MapMask::File(path)) => json!({"file": path}),
            Some(MapMask::Sphere { radius_a }) => json!({"sphere_radius_A": radius_a}),
            None => Value::Null,
        }
    }
}

/// The `fsc` command's table: a line per shell, then the resolutions and AreaFSC.
impl fmt::Display for MapFsc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let curve = &self.curve;
        writeln!(
            f,
            "FSC of {} and {}",
            self.map1.display(),
            self.map2.display()
        )?;
        writeln!(
            f,
            "box {}³, voxel {} Å, {} binning, mask: {}",
            curve.box_size,
            curve.apix,
            curve.binning.name(),
            match self.mask_json() {
                Value::Null => "none".to_string(),
                other => other.to_string(),
            }
        )?;
        writeln!(
            f,
            "{:>5} {:>10} {:>9} {:>8} {:>8}",
            "shell", "1/Å", "Å", "Nyquist", "FSC"
        )?;
        for (i, ((fr, nyq), c)) in curve
            .frequency_per_a
            .iter()
            .zip(curve.nyquist_fraction())
            .zip(&curve.fsc)
            .enumerate()
        {
            let res = if *fr > 0.0 {
                format!("{:.2}", 1.0 / fr)
            } else {
                "inf".into()
            };
            writeln!(f, "{i:>5} {fr:>10.5} {res:>9} {nyq:>8.3} {c:>8.4}")?;
        }
        for t in THRESHOLDS {
            match curve.resolution(t) {
                Some(r) => writeln!(
                    f,
                    "resolution at FSC {t}: {:.2} Å ({:.3} of Nyquist)",
                    r.angstrom, r.nyquist_fraction
                )?,
                None => writeln!(
                    f,
                    "resolution at FSC {t}: not reached (the FSC stays above {t} up to the last \
                     shell)"
                )?,
            }
        }
        writeln!(f, "AreaFSC: {:.4}", curve.area())
    }
}

/// The settings of [`align_maps`].
#[derive(Debug, Clone, PartialEq)]
pub struct AlignSettings {
    /// The map to align (MRC volume).
    pub volume: PathBuf,
    /// The reference (MRC volume), of the map's box and voxel size.
    pub reference: PathBuf,
    /// Where to write the aligned map (MRC, float32, the reference's voxel size).
    pub out: PathBuf,
    /// The search.
    pub config: AlignConfig,
    /// Voxel size in Å of both maps, overriding their headers.
    pub apix: Option<f64>,
}

/// A map aligned to a reference and written.
#[derive(Debug, Clone, PartialEq)]
pub struct MapAlignment {
    /// The map aligned.
    pub volume: PathBuf,
    /// The reference.
    pub reference: PathBuf,
    /// The aligned map written.
    pub out: PathBuf,
    /// The transform that aligns the map to the reference.
    pub transform: Transform,
    /// Normalised correlation with the reference before the transform.
    pub score_before: f64,
    /// And after it.
    pub score: f64,
    /// The reference's voxel size, Å.
    pub voxel_size_a: f64,
    /// Seconds taken, reading and writing included.
    pub seconds: f64,
}

/// Aligns one MRC map to another (read with [`read_map_pair`]) with [`mcg_eval::align`] and
/// writes the aligned map to `settings.out` (never over an input), after checking that the
/// search's grid of rotations fits in memory.
pub fn align_maps(settings: &AlignSettings) -> Result<MapAlignment> {
    let start = Instant::now();
    refuse_overwriting_inputs(
        &[settings.volume.clone(), settings.reference.clone()],
        &[("--out", &settings.out)],
    )?;
    let (volume, reference) = read_map_pair(&settings.volume, &settings.reference, settings.apix)?;
    let config = &settings.config;
    // (A step outside (0°, 90°] is refused by the alignment itself, naming it.)
    if config.angular_step_deg > 0.0 && config.angular_step_deg <= 90.0 {
        need_memory(
            &format!("--angular-step {}", config.angular_step_deg),
            "the global search's grid of rotations",
            mcg_eval::align::search_bytes(config),
        )?;
    }
    let found = align(&volume, &reference, config).with_context(|| {
        format!(
            "aligning {} to {}",
            settings.volume.display(),
            settings.reference.display()
        )
    })?;
    let aligned =
        Volume::new(found.aligned.into_data(), reference.apix()).context("the aligned map")?;
    mrc::write_volume(&settings.out, &aligned)?;
    Ok(MapAlignment {
        volume: settings.volume.clone(),
        reference: settings.reference.clone(),
        out: settings.out.clone(),
        transform: found.transform,
        score_before: found.score_before,
        score: found.score,
        voxel_size_a: f64::from(reference.apix()),
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl MapAlignment {
    /// The transform (Euler angles, matrix, hand, shift), the correlations and the files, as
    /// the `align` command's JSON.
    pub fn to_json(&self) -> Value {
        let t = &self.transform;
        let pose = t.pose();
        json!({
            "volume": self.volume,
            "reference": self.reference,
            "output": self.out,
            "euler_deg": {"rot": pose.rot, "tilt": pose.tilt, "psi": pose.psi},
            "rotation_matrix": t.rotation,
            "flipped": t.flipped,
            "shift_A": t.shift_angstrom(self.voxel_size_a),
            "shift_voxels": t.shift_voxels,
            "correlation_before": self.score_before,
            "correlation_after": self.score,
            "voxel_size_A": self.voxel_size_a,
            "seconds": self.seconds,
            "transform": "aligned(r) = V(F·Rᵀ·(r − t)), r from the box centre (voxel N/2): \
                          hand flip F (z → −z) if flipped, then rotation R = RELION A(rot, tilt, psi), \
                          then shift t",
        })
    }
}

/// The `align` command's text: the rotation, hand, shift and correlations, and the file written.
impl fmt::Display for MapAlignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.transform;
        let pose = t.pose();
        let shift_a = t.shift_angstrom(self.voxel_size_a);
        writeln!(
            f,
            "aligned {} to {}",
            self.volume.display(),
            self.reference.display()
        )?;
        writeln!(
            f,
            "rotation (RELION Euler angles): rot {:.2}°, tilt {:.2}°, psi {:.2}°",
            pose.rot, pose.tilt, pose.psi
        )?;
        writeln!(
            f,
            "flipped (mirrored z → −z before rotating): {}",
            if t.flipped { "yes" } else { "no" }
        )?;
        writeln!(
            f,
            "shift: x {:.2} Å, y {:.2} Å, z {:.2} Å",
            shift_a[0], shift_a[1], shift_a[2]
        )?;
        writeln!(
            f,
            "correlation: {:.4} before, {:.4} after",
            self.score_before, self.score
        )?;
        writeln!(f, "written: {}", self.out.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// A map of three blobs of different sizes and weights (no rotational symmetry), of box `n`
    /// and voxel `apix` Å, moved by `shift` voxels (z, y, x).
    fn blobs(n: usize, apix: f32, shift: [f64; 3]) -> Volume {
        let c = n as f64 / 2.0;
        let data = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
            let d2 = |cz: f64, cy: f64, cx: f64, s: f64| {
                let (dz, dy, dx) = (z as f64 - cz, y as f64 - cy, x as f64 - cx);
                (-(dz * dz + dy * dy + dx * dx) / (2.0 * s * s)).exp()
            };
            (d2(c + shift[0], c + 3.0 + shift[1], c - 2.0 + shift[2], 2.0)
                + 0.6
                    * d2(
                        c - 3.0 + shift[0],
                        c - 2.0 + shift[1],
                        c + 3.0 + shift[2],
                        1.5,
                    )
                + 0.3 * d2(c + 3.0 + shift[0], c - 3.0 + shift[1], c + shift[2], 1.2))
                as f32
        });
        Volume::new(data, apix).unwrap()
    }

    fn write(dir: &Path, name: &str, v: &Volume) -> PathBuf {
        let path = dir.join(name);
        mrc::write_volume(&path, v).unwrap();
        path
    }

    #[test]
    fn map_pairs_must_share_their_grid() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.mrc", &blobs(16, 2.0, [0.0; 3]));
        let small = write(dir.path(), "small.mrc", &blobs(12, 2.0, [0.0; 3]));
        let coarse = write(dir.path(), "coarse.mrc", &blobs(16, 3.0, [0.0; 3]));
        let flat = Volume::new(Array3::from_elem((16, 16, 16), 1.5), 2.0).unwrap();
        let flat = write(dir.path(), "flat.mrc", &flat);
        let err = format!("{:#}", read_map_pair(&a, &small, None).unwrap_err());
        assert!(
            err.contains("small.mrc: box: 12³ voxels, expected the 16³"),
            "{err}"
        );
        let err = format!("{:#}", read_map_pair(&a, &coarse, None).unwrap_err());
        assert!(
            err.contains("coarse.mrc: voxel size: 3 Å, expected the 2 Å"),
            "{err}"
        );
        // --apix overrides both headers.
        assert!(read_map_pair(&a, &coarse, Some(2.0)).is_ok());
        let err = format!("{:#}", read_map_pair(&a, &flat, None).unwrap_err());
        assert!(err.contains("flat.mrc: every voxel is 1.5"), "{err}");
    }

    #[test]
    fn the_fsc_of_a_map_with_itself_is_one_and_masks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.mrc", &blobs(16, 2.0, [0.0; 3]));
        let settings = FscSettings {
            map1: a.clone(),
            map2: a.clone(),
            mask: None,
            binning: Binning::Standard,
            apix: None,
            plot: None,
        };
        let same = fsc_maps(&settings).unwrap();
        assert!(same.curve.fsc.iter().all(|&c| (c - 1.0).abs() < 1e-6));
        let json = same.to_json();
        assert_eq!(json["resolution_A"]["0.143"], Value::Null);
        assert_eq!(json["mask"], Value::Null);
        assert!((json["area"].as_f64().unwrap() - 1.0).abs() < 1e-6);
        let table = same.to_string();
        assert!(
            table.contains("resolution at FSC 0.5: not reached"),
            "{table}"
        );
        assert!(table.ends_with("AreaFSC: 1.0000\n"), "{table}");
        // Shells 0 … N/2: a line each, below three lines of heading.
        assert_eq!(table.lines().count(), 3 + 9 + 2 + 1);

        let tiny = FscSettings {
            mask: Some(MapMask::Sphere { radius_a: 2.0 }),
            ..settings.clone()
        };
        let err = format!("{:#}", fsc_maps(&tiny).unwrap_err());
        assert!(err.starts_with("--mask-radius 2: "), "{err}");
        let negative = FscSettings {
            mask: Some(MapMask::Sphere { radius_a: -1.0 }),
            ..settings.clone()
        };
        let err = format!("{:#}", fsc_maps(&negative).unwrap_err());
        assert!(err.contains("expected a radius in Å above 0"), "{err}");
        let over_input = FscSettings {
            plot: Some(a.clone()),
            ..settings
        };
        let err = format!("{:#}", fsc_maps(&over_input).unwrap_err());
        assert!(err.contains("--plot"), "{err}");
    }

    #[test]
    fn a_shifted_map_is_aligned_back_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let reference = write(dir.path(), "ref.mrc", &blobs(16, 2.0, [0.0; 3]));
        let moved = write(dir.path(), "moved.mrc", &blobs(16, 2.0, [0.0, 0.0, 2.0]));
        let settings = AlignSettings {
            volume: moved,
            reference,
            out: dir.path().join("aligned.mrc"),
            config: AlignConfig {
                angular_step_deg: 30.0,
                allow_flip: false,
                ..AlignConfig::default()
            },
            apix: None,
        };
        let found = align_maps(&settings).unwrap();
        // The map moved by +2 voxels along x goes back by 2 voxels (4 Å).
        let shift = found.transform.shift_angstrom(found.voxel_size_a);
        assert!((shift[0] + 4.0).abs() < 0.5, "{shift:?}");
        assert!(found.score > 0.99 && found.score > found.score_before);
        assert!(settings.out.is_file());
        let json = found.to_json();
        assert_eq!(json["flipped"], false);
        assert_eq!(json["voxel_size_A"], 2.0);
        let text = found.to_string();
        assert!(
            text.starts_with("aligned ")
                && text.contains("flipped (mirrored z → −z before rotating): no"),
            "{text}"
        );
        // The output may not be an input.
        let over = AlignSettings {
            out: settings.reference.clone(),
            ..settings
        };
        assert!(format!("{:#}", align_maps(&over).unwrap_err()).contains("--out"));
    }
}
