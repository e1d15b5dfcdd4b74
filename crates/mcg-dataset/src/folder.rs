//! The data-set folder that `synth` writes and `train` and `report` read, as types: its paths
//! ([`DataSetDir`]), its `manifest.json` ([`Manifest`], with [`Noise`], [`Outputs`] and
//! [`ShardInfo`]), the record of its ground-truth maps ([`StatesRecord`]) and the ground truth
//! itself ([`GroundTruth`]). Nothing else in the workspace spells these names.
//!
//! ```text
//! OUT/particles.star    metadata; the true parameters in _mcg<Name> columns
//! OUT/particles.mrcs    the images (or shards/K-of-M/particles.mrcs after a merge)
//! OUT/particles.h5      the HDF5 container (optional)
//! OUT/landscape.json    the landscape the particles were drawn from
//! OUT/manifest.json     every setting, the seed, the noise
//! OUT/background.mrcs   pure-noise images, when asked for (synth --background K)
//! OUT/ground_truth/     NAME.mrc for each state, states.json listing them
//! OUT/shards/K-of-M/    part K of M, each with its own particles and manifest
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use mcg_physics::Volume;
use mcg_physics::noise::NoiseSpectrum;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The particle metadata's file name.
pub const STAR: &str = "particles.star";
/// The image stack's file name.
pub const STACK: &str = "particles.mrcs";
/// The HDF5 container's file name.
pub const H5: &str = "particles.h5";
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The landscape's file name.
pub const LANDSCAPE: &str = "landscape.json";
/// The pure-noise images' file name (patches without a particle, like boxes from empty regions
/// of a micrograph).
pub const BACKGROUND: &str = "background.mrcs";
/// The ground-truth folder's name.
pub const GROUND_TRUTH: &str = "ground_truth";
/// The shards' folder name.
pub const SHARDS: &str = "shards";

/// The paths of a data-set folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSetDir {
    root: PathBuf,
}

impl DataSetDir {
    /// The data set in folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `particles.star`.
    pub fn star(&self) -> PathBuf {
        self.root.join(STAR)
    }

    /// `particles.mrcs`.
    pub fn stack(&self) -> PathBuf {
        self.root.join(STACK)
    }

    /// `particles.h5`.
    pub fn h5(&self) -> PathBuf {
        self.root.join(H5)
    }

    /// `background.mrcs`.
    pub fn background(&self) -> PathBuf {
        self.root.join(BACKGROUND)
    }

    /// `manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST)
    }

    /// `landscape.json`.
    pub fn landscape(&self) -> PathBuf {
        self.root.join(LANDSCAPE)
    }

    /// `ground_truth/`.
    pub fn ground_truth(&self) -> PathBuf {
        self.root.join(GROUND_TRUTH)
    }

    /// `ground_truth/states.json`, the list of the ground-truth maps.
    pub fn states_record(&self) -> PathBuf {
        self.ground_truth().join("states.json")
    }

    /// `ground_truth/NAME.mrc`.
    pub fn truth_map(&self, name: &str) -> PathBuf {
        self.ground_truth().join(format!("{name}.mrc"))
    }

    /// `shards/`.
    pub fn shards(&self) -> PathBuf {
        self.root.join(SHARDS)
    }

    /// `shards/K-of-M`, the folder of shard `k` of `m` (a data-set folder itself).
    pub fn shard(&self, k: usize, m: usize) -> DataSetDir {
        DataSetDir::new(self.shards().join(shard_name(k, m)))
    }

    /// The ground-truth record, or `None` when it is missing or unreadable.
    pub fn read_states_record(&self) -> Option<StatesRecord> {
        read_json(&self.states_record())
    }

    /// The manifest, or `None` when it is missing or unreadable (an unfinished set).
    pub fn read_manifest(&self) -> Option<Manifest> {
        read_json(&self.manifest())
    }

    /// Whether the manifest exists, records `settings`, and `particles.star` and
    /// `particles.mrcs` (and `background.mrcs` when it lists one) are beside it: a finished set
    /// made with these settings.
    pub fn is_complete(&self, settings: &Value) -> bool {
        self.read_manifest().is_some_and(|m| {
            &m.settings == settings
                && (m.outputs.background.is_none() || self.background().is_file())
        }) && self.star().is_file()
            && self.stack().is_file()
    }
}

/// `K-of-M`, a shard folder's name.
pub fn shard_name(k: usize, m: usize) -> String {
    format!("{k}-of-{m}")
}

/// The `(K, M)` of a shard folder's name `K-of-M` (1 ≤ K ≤ M; other names are no shard's).
pub fn parse_shard_name(name: &str) -> Option<(usize, usize)> {
    let (k, m) = name.split_once("-of-")?;
    let (k, m): (usize, usize) = (k.parse().ok()?, m.parse().ok()?);
    (1 <= k && k <= m).then_some((k, m))
}

/// `manifest.json` of a synthetic set (whole, shard or merged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `multicryogan VERSION`.
    pub software: String,
    /// The command line that made the set.
    pub command: Vec<String>,
    /// The settings that define the data: equal settings give equal data, bit for bit.
    pub settings: Value,
    /// The molecule's description (structure files or phantom, atoms, bodies).
    pub molecule: Value,
    /// The noise added.
    pub noise: Noise,
    /// Which part of the whole set a shard holds; `None` for a whole or merged set.
    pub shard: Option<ShardInfo>,
    /// Particles per class (1-based classes), for discrete sets.
    pub class_counts: Option<Vec<usize>>,
    /// The files written.
    pub outputs: Outputs,
    /// Wall-clock seconds spent (summed over shards after a merge).
    pub wall_seconds: f64,
    /// The number of shards merged into this set, for a merged set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}

/// The noise of a simulated set, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// σ of the Gaussian noise (its pixel standard deviation; of the white noise unless
    /// `spectrum` is given); `None` for clean images.
    pub sigma: Option<f64>,
    /// The SNR in dB that set σ, when one did.
    pub snr_db: Option<f64>,
    /// The mean clean-image variance σ was calibrated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_variance: Option<f64>,
    /// How many clean images the calibration used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_images: Option<usize>,
    /// The SNR definition, [`mcg_physics::noise::SNR_DEFINITION`] (or
    /// [`mcg_physics::noise::SNR_DEFINITION_COLOURED`] for coloured noise).
    pub snr_definition: String,
    /// Where the coloured noise's shape came from: `realistic` (the model of
    /// [`NoiseSpectrum::realistic`]) or the spectrum file given. Absent for white noise (and in
    /// older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The coloured noise's power spectrum, scaled to pixel variance σ² (before any
    /// normalisation), in [`NoiseSpectrum`]'s table form. Absent for white noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<NoiseSpectrum>,
}

/// The files a manifest lists, relative to its folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    /// The image stack of a whole set or shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The particle metadata.
    pub star: String,
    /// The stacks of a merged set (`shards/K-of-M/particles.mrcs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<String>,
    /// The ground-truth folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ground_truth: Option<String>,
    /// The landscape file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landscape: Option<String>,
    /// The HDF5 container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h5: Option<String>,
    /// The pure-noise images (`background.mrcs`), when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
}

/// Which part of a whole set a shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// K (1-based).
    pub index: usize,
    /// M.
    pub of: usize,
    /// The whole set's index of the shard's first particle.
    pub first_particle: usize,
    /// The shard's particle count.
    pub images: usize,
}

/// `ground_truth/states.json`: the settings that made the maps and their names, in the
/// landscape's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatesRecord {
    /// The data set's settings (as in its manifest; absent in a hand-made truth folder).
    #[serde(default)]
    pub settings: Value,
    /// The maps' file stems.
    pub states: Vec<String>,
}

/// The noise σ recorded in the manifest beside a particle file (`particles.star` of a
/// `synth` or `project` folder): `Ok(None)` when there is no readable manifest with a noise
/// record, `Ok(Some((manifest, σ)))` (σ = 0 for a clean set), an error naming the file and the
/// field when the recorded σ is not a number ≥ 0.
pub fn noise_sigma_beside(particles: &Path) -> Result<Option<(PathBuf, f64)>> {
    let Some(path) = particles.parent().map(|p| p.join(MANIFEST)) else {
        return Ok(None);
    };
    let Some(doc) = read_json::<Value>(&path) else {
        return Ok(None);
    };
    if !doc["noise"].is_object() {
        return Ok(None);
    }
    // null is a clean set (synth --clean); anything else must be a σ ≥ 0.
    let field = &doc["noise"]["sigma"];
    let sigma = match field {
        Value::Null => 0.0,
        v => match v.as_f64() {
            Some(s) if s.is_finite() && s >= 0.0 => s,
            _ => anyhow::bail!(
                "{}: noise.sigma: found {v}, expected a number ≥ 0 (or null for a clean set)",
                path.display()
            ),
        },
    };
    Ok(Some((path, sigma)))
}

/// The coloured noise's spectrum recorded in the manifest beside a particle file (scaled to
/// the pixel variance σ², see [`Noise::spectrum`]): `Ok(None)` when there is no readable
/// manifest or it records white noise, an error naming the file and the field when the
/// recorded spectrum is not a valid one.
pub fn noise_spectrum_beside(particles: &Path) -> Result<Option<(PathBuf, NoiseSpectrum)>> {
    let Some(path) = particles.parent().map(|p| p.join(MANIFEST)) else {
        return Ok(None);
    };
    let Some(doc) = read_json::<Value>(&path) else {
        return Ok(None);
    };
    let field = &doc["noise"]["spectrum"];
    if field.is_null() {
        return Ok(None);
    }
    let spectrum = NoiseSpectrum::deserialize(field)
        .with_context(|| format!("{}: noise.spectrum", path.display()))?;
    Ok(Some((path, spectrum)))
}

/// A JSON file as `T`, or `None` when it is missing or does not parse.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The ground truth of a synthetic data set: its maps along the landscape, the parameter's
/// value at each, and every particle's true value.
#[derive(Debug)]
pub struct GroundTruth {
    /// Ground-truth maps with their file stems, in the landscape's order.
    pub states: Vec<(String, Volume)>,
    /// The parameter's value at each state (β in degrees for Hsp90).
    pub values: Vec<f64>,
    /// The parameter's name.
    pub parameter: String,
    /// Whether the landscape takes finitely many values.
    pub discrete: bool,
    /// Every particle's true parameter value (from particles.star), when present.
    pub particle_values: Vec<f64>,
}

impl GroundTruth {
    /// Reads the ground truth of the data set in `dir` (a `synth` folder), whose maps must
    /// have voxels of `apix` Å. Errors name the file and the field.
    pub fn load(dir: &Path, apix: f64) -> Result<Self> {
        let folder = DataSetDir::new(dir);
        let states_path = folder.states_record();
        let text = std::fs::read_to_string(&states_path).with_context(|| {
            format!(
                "reading {} (is {} a synth folder?)",
                states_path.display(),
                dir.display()
            )
        })?;
        // serde's message names the field and what it expected ("missing field `states`").
        let record: StatesRecord = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected {{\"settings\": …, \"states\": [names]}}",
                states_path.display()
            )
        })?;
        let names = record.states;
        ensure!(
            !names.is_empty(),
            "{}: field states is empty",
            states_path.display()
        );
        let mut states = Vec::with_capacity(names.len());
        for name in &names {
            let path = folder.truth_map(name);
            let v = mcg_formats::mrc::read_volume(&path, None)
                .with_context(|| format!("reading the ground truth {}", path.display()))?;
            ensure!(
                (f64::from(v.apix()) - apix).abs() < 1e-3 * apix,
                "{}: voxel size {} Å, but the run's data have {apix} Å",
                path.display(),
                v.apix()
            );
            states.push((name.clone(), v));
        }
        let landscape_path = folder.landscape();
        let landscape = mcg_synth::landscape::Landscape::from_json_file(&landscape_path)
            .with_context(|| format!("reading {}", landscape_path.display()))?;
        let discrete = landscape.is_discrete();
        let count = states.len();
        // The same values as `synth` gave its ground-truth states.
        let (parameter, values) = match landscape.parameters.first() {
            Some(p) => (
                p.name.clone(),
                landscape
                    .state_values(count)
                    .iter()
                    .map(|v| v[0])
                    .collect::<Vec<f64>>(),
            ),
            None => ("state".to_string(), (0..count).map(|k| k as f64).collect()),
        };
        ensure!(
            values.len() == count,
            "{}: {count} ground-truth states, but the landscape in {} makes {}",
            states_path.display(),
            landscape_path.display(),
            values.len()
        );
        let particle_values = particle_values(&folder.star(), &parameter);
        Ok(Self {
            states,
            values,
            parameter,
            discrete,
            particle_values,
        })
    }

    /// The first state's map.
    pub fn first(&self) -> &Volume {
        &self.states[0].1
    }

    /// The last state's map.
    pub fn last(&self) -> &Volume {
        &self.states[self.states.len() - 1].1
    }

    /// The state nearest to parameter value `v`.
    pub fn nearest(&self, v: f64) -> usize {
        self.values
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 - v).abs().total_cmp(&(b.1 - v).abs()))
            .map_or(0, |(i, _)| i)
    }

    /// The fraction of particles in the first state (discrete sets).
    pub fn first_fraction(&self) -> Option<f64> {
        if self.particle_values.is_empty() {
            return None;
        }
        let v0 = self.values[0];
        let n = self
            .particle_values
            .iter()
            .filter(|&&v| (v - v0).abs() < 1e-6)
            .count();
        Some(n as f64 / self.particle_values.len() as f64)
    }
}

/// The `_mcg<Parameter>` column of a synth STAR file, or nothing when absent or unreadable.
fn particle_values(star: &Path, parameter: &str) -> Vec<f64> {
    let Ok(set) = mcg_formats::star::read_particles(star, &Default::default()) else {
        return Vec::new();
    };
    let want = mcg_synth::landscape::star_column(parameter);
    set.extra
        .iter()
        .find(|(label, _)| *label == want)
        .map(|(_, values)| values.iter().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_lookups_pick_the_nearest_state_and_count_the_first() {
        let t = GroundTruth {
            states: Vec::new(),
            values: vec![0.0, 10.0, 20.0],
            parameter: "beta".into(),
            discrete: false,
            particle_values: vec![0.0, 0.0, 20.0, 20.0],
        };
        assert_eq!(t.nearest(12.0), 1);
        assert_eq!(t.nearest(19.0), 2);
        assert_eq!(t.first_fraction(), Some(0.5));
    }
}
