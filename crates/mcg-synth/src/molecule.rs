//! A landscape made concrete: its atoms loaded, its bodies selected, its frame fixed; from it
//! the conformation of each particle, the ground-truth maps, and the projector of particle
//! images.
//!
//! Two kinds of molecule:
//! - **bodies**: the structures' atoms split into rigid bodies (atoms no body selects form one
//!   more, fixed body); each body moves by at most one hinge motion driven by a parameter.
//!   Images come from [`RigidBodyProjector`]: one Fourier slice per body, no volume per image.
//! - **discrete models**: each particle is one of several structures (e.g. adenylate kinase
//!   closed and open), each with its own Fourier projector.
//!
//! One frame for every conformation (conventions "Density from atoms"): the heavy-atom centroid
//! of the reference conformation (the structures as given; the first discrete model).

use std::path::{Path, PathBuf};

use mcg_physics::Pose;
use mcg_physics::project::FourierProjector;
use mcg_physics::simulate::{ImagingParams, SliceSource};
use mcg_physics::volume::Volume;
use rustfft::num_complex::Complex32;

use crate::bodies::{BodyMotion, DensityAtom, RigidBodyProjector};
use crate::landscape::{Landscape, Motion};
use crate::{AtomicModel, DensityConfig, SynthError, density_map, hinge_rotate};

/// Where a molecule's atoms came from (recorded in manifests).
#[derive(Debug, Clone, PartialEq)]
pub enum StructureSource {
    /// Structure files, as read.
    Files(Vec<PathBuf>),
    /// The built-in Hsp90-like phantom ([`crate::phantom`]).
    Phantom,
}

impl std::fmt::Display for StructureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Phantom => write!(f, "built-in Hsp90-like phantom"),
            Self::Files(paths) => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{}", names.join(", "))
            }
        }
    }
}

/// One particle's conformation: its motion parameters (in the order of the landscape's
/// `parameters`) or its discrete model.
#[derive(Debug, Clone, PartialEq)]
pub struct Conformation {
    /// Motion parameter values (degrees for hinge angles).
    pub values: Vec<f64>,
    /// Index of the discrete model, for a landscape of discrete models.
    pub model: Option<usize>,
}

/// A body's atoms and its hinge: (unit axis, pivot Å, index of the driving parameter).
#[derive(Debug, Clone)]
struct BodyAtoms {
    name: String,
    model: AtomicModel,
    hinge: Option<([f64; 3], [f64; 3], usize)>,
}

#[derive(Debug, Clone)]
enum Kind {
    Bodies(Vec<BodyAtoms>),
    Discrete(Vec<(String, AtomicModel)>),
}

/// A landscape with its atoms (see the module notes).
#[derive(Debug, Clone)]
pub struct Molecule {
    landscape: Landscape,
    kind: Kind,
    origin: [f64; 3],
    source: StructureSource,
}

fn landscape_error(field: impl Into<String>, message: impl Into<String>) -> SynthError {
    SynthError::Landscape {
        field: field.into(),
        message: message.into(),
    }
}

impl Molecule {
    /// Reads the landscape's structure files (or discrete models) from `dir` and builds the
    /// molecule. Errors name the file.
    pub fn load(landscape: Landscape, dir: &Path) -> Result<Self, SynthError> {
        let paths = landscape.structure_paths(dir);
        let structures = paths
            .iter()
            .map(|p| AtomicModel::read_model(p))
            .collect::<Result<Vec<_>, _>>()?;
        let model_paths = landscape.discrete_model_paths(dir);
        let models = model_paths
            .iter()
            .map(|p| AtomicModel::read_model(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut files = paths;
        files.extend(model_paths);
        Self::from_models(landscape, structures, models, StructureSource::Files(files))
    }

    /// The molecule of `landscape` (an Hsp90 preset) on the built-in phantom's atoms.
    pub fn hsp90_phantom(landscape: Landscape) -> Result<Self, SynthError> {
        Self::from_models(
            landscape,
            vec![crate::phantom::hsp90_phantom()],
            Vec::new(),
            StructureSource::Phantom,
        )
    }

    /// Builds the molecule from atomic models already read: `structures` together form the
    /// reference conformation; `models` are the discrete models in the landscape's order.
    ///
    /// Fails when a body selects no atom, two bodies select the same atom, a body has two
    /// motions, the model counts differ from the landscape's, or there is no heavy atom.
    pub fn from_models(
        landscape: Landscape,
        structures: Vec<AtomicModel>,
        models: Vec<AtomicModel>,
        source: StructureSource,
    ) -> Result<Self, SynthError> {
        let discrete = landscape.discrete_models.as_deref().unwrap_or(&[]);
        if models.len() != discrete.len() {
            return Err(landscape_error(
                "discrete_models",
                format!(
                    "{} models given for {} listed",
                    models.len(),
                    discrete.len()
                ),
            ));
        }
        let (kind, origin) = if discrete.is_empty() {
            let mut reference = AtomicModel::default();
            for s in &structures {
                reference.extend(s);
            }
            let origin = crate::frame_origin(&reference)?;
            (Kind::Bodies(split_bodies(&landscape, &reference)?), origin)
        } else {
            let origin = crate::frame_origin(&models[0])?;
            let named = discrete
                .iter()
                .map(|d| d.name.clone())
                .zip(models)
                .collect();
            (Kind::Discrete(named), origin)
        };
        Ok(Self {
            landscape,
            kind,
            origin,
            source,
        })
    }

    /// The landscape.
    pub fn landscape(&self) -> &Landscape {
        &self.landscape
    }

    /// Where the atoms came from.
    pub fn source(&self) -> &StructureSource {
        &self.source
    }

    /// The frame origin, Å in the structures' frame: voxel `N/2` of every map.
    pub fn origin(&self) -> [f64; 3] {
        self.origin
    }

    /// Number of atoms of the reference conformation (all bodies, or the first model).
    pub fn atom_count(&self) -> usize {
        match &self.kind {
            Kind::Bodies(bodies) => bodies.iter().map(|b| b.model.atoms.len()).sum(),
            Kind::Discrete(models) => models[0].1.atoms.len(),
        }
    }

    /// The conformation of particle `index` under `seed` (reproducible, independent of order:
    /// [`Landscape::sample_parameters`]).
    pub fn conformation(&self, seed: u64, index: u64) -> Conformation {
        match &self.kind {
            Kind::Bodies(_) => Conformation {
                values: self.landscape.sample_parameters(seed, index),
                model: None,
            },
            Kind::Discrete(_) => Conformation {
                values: Vec::new(),
                model: self.landscape.sample_discrete_model(seed, index),
            },
        }
    }

    /// The 1-based class of a conformation (`_rlnClassNumber`): the discrete model's number,
    /// or [`Landscape::class_of`] for discrete parameters; `None` for continuous landscapes.
    pub fn class_of(&self, c: &Conformation) -> Option<u32> {
        match c.model {
            Some(m) => u32::try_from(m + 1).ok(),
            None => self.landscape.class_of(&c.values),
        }
    }

    /// The atoms of a conformation as density input (positions relative to the frame origin,
    /// weight Z): each body moved by its hinge.
    pub fn conformation_atoms(&self, c: &Conformation) -> Result<Vec<DensityAtom>, SynthError> {
        match &self.kind {
            Kind::Bodies(bodies) => {
                let mut atoms = Vec::new();
                for body in bodies {
                    let mut model = body.model.clone();
                    if let Some((axis, pivot, parameter)) = body.hinge {
                        let angle = self.value(c, parameter)?;
                        hinge_rotate(
                            model.atoms.iter_mut().map(|a| &mut a.position),
                            axis,
                            pivot,
                            angle,
                        )?;
                    }
                    atoms.extend(model.density_atoms(self.origin)?);
                }
                Ok(atoms)
            }
            Kind::Discrete(models) => {
                let m = c.model.ok_or_else(|| {
                    landscape_error("discrete_models", "the conformation names no model")
                })?;
                let (_, model) = models.get(m).ok_or_else(|| {
                    landscape_error("discrete_models", format!("no model number {}", m + 1))
                })?;
                model.density_atoms(self.origin)
            }
        }
    }

    /// The density map of a conformation on the grid of `cfg`, from its moved atoms.
    pub fn density(&self, c: &Conformation, cfg: &DensityConfig) -> Result<Volume, SynthError> {
        density_map(&self.conformation_atoms(c)?, cfg)
    }

    /// The ground-truth states along the landscape, named for files: for one parameter,
    /// `count` values evenly spaced over its range, named `<parameter>_<value>` when every value
    /// is a whole number (Hsp90: `beta_00` … `beta_20`) and `<parameter>_<index>` otherwise;
    /// for several, `count` states along the diagonal from every minimum to every maximum
    /// (`state_<index>`); one state when no parameter varies (fixed values); with no parameter,
    /// the reference (`reference`); for discrete models, each model (`model_<number>_<name>`).
    pub fn ground_truth_states(&self, count: usize) -> Vec<(String, Conformation)> {
        if let Kind::Discrete(models) = &self.kind {
            return models
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    (
                        format!("model_{}_{}", i + 1, file_safe(name)),
                        Conformation {
                            values: Vec::new(),
                            model: Some(i),
                        },
                    )
                })
                .collect();
        }
        let params = &self.landscape.parameters;
        if params.is_empty() {
            let c = Conformation {
                values: Vec::new(),
                model: None,
            };
            return vec![("reference".into(), c)];
        }
        let states = self.landscape.state_values(count);
        let whole = params.len() == 1
            && states.iter().all(|v| {
                let v = v[0];
                (v - v.round()).abs() < 1e-9 && v >= 0.0
            });
        let width = (states.len() - 1).to_string().len().max(2);
        states
            .into_iter()
            .enumerate()
            .map(|(k, values)| {
                let name = if whole {
                    format!(
                        "{}_{:0width$}",
                        file_safe(&params[0].name),
                        values[0].round() as i64
                    )
                } else if params.len() == 1 {
                    format!("{}_{k:0width$}", file_safe(&params[0].name))
                } else {
                    format!("state_{k:0width$}")
                };
                (
                    name,
                    Conformation {
                        values,
                        model: None,
                    },
                )
            })
            .collect()
    }

    /// How many maps [`Molecule::projector`] transforms: one per rigid body, or one per model.
    pub fn projector_volume_count(&self) -> usize {
        match &self.kind {
            Kind::Bodies(bodies) => bodies.len(),
            Kind::Discrete(models) => models.len(),
        }
    }

    /// The projector of particle images on the grid of `cfg` (body maps or model maps, their
    /// 3D spectra oversampled `oversampling` times).
    pub fn projector(
        &self,
        cfg: &DensityConfig,
        oversampling: usize,
    ) -> Result<ConformationProjector, SynthError> {
        match &self.kind {
            Kind::Bodies(bodies) => {
                let pairs: Vec<(&AtomicModel, BodyMotion)> = bodies
                    .iter()
                    .map(|b| {
                        let motion = match b.hinge {
                            None => BodyMotion::Fixed,
                            Some((axis, pivot, _)) => BodyMotion::Hinge { axis, pivot },
                        };
                        (&b.model, motion)
                    })
                    .collect();
                let projector =
                    RigidBodyProjector::from_models(&pairs, self.origin, cfg, oversampling)?;
                let parameters = bodies
                    .iter()
                    .filter_map(|b| b.hinge.map(|(_, _, p)| p))
                    .collect();
                Ok(ConformationProjector::Bodies {
                    projector,
                    parameters,
                })
            }
            Kind::Discrete(models) => {
                let projectors = models
                    .iter()
                    .map(|(_, m)| {
                        let volume = density_map(&m.density_atoms(self.origin)?, cfg)?;
                        Ok(FourierProjector::with_oversampling(&volume, oversampling)?)
                    })
                    .collect::<Result<Vec<_>, SynthError>>()?;
                Ok(ConformationProjector::Models(projectors))
            }
        }
    }

    /// A description for logs and manifests: kind, bodies and atom counts.
    pub fn describe(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Bodies(bodies) => serde_json::json!({
                "kind": "rigid bodies",
                "bodies": bodies.iter().map(|b| serde_json::json!({
                    "name": b.name,
                    "atoms": b.model.atoms.len(),
                    "moves": b.hinge.is_some(),
                })).collect::<Vec<_>>(),
                "frame_origin_A": self.origin,
            }),
            Kind::Discrete(models) => serde_json::json!({
                "kind": "discrete models",
                "models": models.iter().map(|(name, m)| serde_json::json!({
                    "name": name, "atoms": m.atoms.len(),
                })).collect::<Vec<_>>(),
                "frame_origin_A": self.origin,
            }),
        }
    }

    fn value(&self, c: &Conformation, parameter: usize) -> Result<f64, SynthError> {
        c.values.get(parameter).copied().ok_or_else(|| {
            landscape_error(
                "parameters",
                format!(
                    "the conformation has {} values but the landscape {}",
                    c.values.len(),
                    self.landscape.parameters.len()
                ),
            )
        })
    }
}

/// Splits the reference atoms into the landscape's bodies (plus a fixed body of the atoms no
/// body selects) and attaches each body's hinge.
fn split_bodies(
    landscape: &Landscape,
    reference: &AtomicModel,
) -> Result<Vec<BodyAtoms>, SynthError> {
    let mut owner: Vec<Option<usize>> = vec![None; reference.atoms.len()];
    for (b, body) in landscape.bodies.iter().enumerate() {
        let range = body.selection.residues.map(|(lo, hi)| lo..=hi);
        let mut count = 0;
        for (i, atom) in reference.atoms.iter().enumerate() {
            let selected = atom.chain == body.selection.chain
                && range
                    .as_ref()
                    .is_none_or(|r| r.contains(&atom.residue_number));
            if !selected {
                continue;
            }
            if let Some(other) = owner[i] {
                return Err(landscape_error(
                    format!("bodies[{b}].selection"),
                    format!(
                        "body {:?} selects atom {} ({} {}{}), already in body {:?}",
                        body.name,
                        atom.serial,
                        atom.name,
                        atom.chain,
                        atom.residue_number,
                        landscape.bodies[other].name
                    ),
                ));
            }
            owner[i] = Some(b);
            count += 1;
        }
        if count == 0 {
            return Err(landscape_error(
                format!("bodies[{b}].selection"),
                format!(
                    "body {:?} selects no atom (chain {:?}, residues {})",
                    body.name,
                    body.selection.chain,
                    body.selection
                        .residues
                        .map_or("all".to_string(), |(lo, hi)| format!("{lo}–{hi}"))
                ),
            ));
        }
    }
    let mut bodies: Vec<BodyAtoms> = landscape
        .bodies
        .iter()
        .map(|b| BodyAtoms {
            name: b.name.clone(),
            model: AtomicModel::default(),
            hinge: None,
        })
        .collect();
    let mut rest = BodyAtoms {
        name: "unselected atoms (fixed)".into(),
        model: AtomicModel::default(),
        hinge: None,
    };
    for (atom, owner) in reference.atoms.iter().zip(&owner) {
        match owner {
            Some(b) => bodies[*b].model.atoms.push(atom.clone()),
            None => rest.model.atoms.push(atom.clone()),
        }
    }
    for (i, motion) in landscape.motions.iter().enumerate() {
        let Motion::Hinge {
            body,
            axis,
            pivot,
            parameter,
        } = motion;
        let b = landscape
            .bodies
            .iter()
            .position(|x| &x.name == body)
            .ok_or_else(|| landscape_error(format!("motions[{i}].body"), "no such body"))?;
        let (p, _) = landscape.parameter(parameter).ok_or_else(|| {
            landscape_error(format!("motions[{i}].parameter"), "no such parameter")
        })?;
        if bodies[b].hinge.is_some() {
            return Err(landscape_error(
                format!("motions[{i}]"),
                format!("body {body:?} already has a motion; each body moves by one hinge"),
            ));
        }
        bodies[b].hinge = Some((*axis, *pivot, p));
    }
    if !rest.model.atoms.is_empty() {
        bodies.push(rest);
    }
    Ok(bodies)
}

/// A name made safe for a file name: letters, digits, `-` and `_` kept, the rest `_`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Projects particles of a [`Molecule`] in any conformation (see [`Molecule::projector`]).
#[derive(Debug)]
pub enum ConformationProjector {
    /// Rigid bodies: one slice per body; `parameters[k]` drives the k-th moving body.
    Bodies {
        /// The bodies' projector.
        projector: RigidBodyProjector,
        /// For each moving body, the index of its parameter.
        parameters: Vec<usize>,
    },
    /// One projector per discrete model.
    Models(Vec<FourierProjector>),
}

impl ConformationProjector {
    /// Edge `N` of the images, pixels.
    pub fn box_size(&self) -> usize {
        match self {
            Self::Bodies { projector, .. } => projector.box_size(),
            Self::Models(p) => p[0].box_size(),
        }
    }

    /// The [`SliceSource`] of a batch whose image `i` shows `conformations[i]`.
    pub fn batch<'a>(&'a self, conformations: &'a [Conformation]) -> BatchSlices<'a> {
        let angles = match self {
            Self::Bodies { parameters, .. } => conformations
                .iter()
                .flat_map(|c| parameters.iter().map(|&p| c.values[p]))
                .collect(),
            Self::Models(_) => Vec::new(),
        };
        BatchSlices {
            projector: self,
            conformations,
            angles,
        }
    }
}

/// The slices of one batch of particles ([`ConformationProjector::batch`]).
#[derive(Debug)]
pub struct BatchSlices<'a> {
    projector: &'a ConformationProjector,
    conformations: &'a [Conformation],
    /// The moving bodies' angles, image after image.
    angles: Vec<f64>,
}

impl SliceSource for BatchSlices<'_> {
    fn slice_spectrum(
        &self,
        index: usize,
        params: &ImagingParams,
        spec: &mut [Complex32],
        scratch: &mut [Complex32],
    ) {
        let pose: &Pose = &params.pose;
        match self.projector {
            ConformationProjector::Bodies {
                projector,
                parameters,
            } => {
                let k = parameters.len();
                let angles = &self.angles[index * k..(index + 1) * k];
                projector.slice_with_scratch(pose, angles, spec, scratch);
            }
            ConformationProjector::Models(projectors) => {
                let m = self.conformations[index]
                    .model
                    .expect("a discrete-model conformation names its model");
                projectors[m].slice(pose, spec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::landscape::{Body, DiscreteModel, Distribution, Parameter, Selection};
    use crate::presets::{hsp90_continuous, hsp90_discrete};
    use mcg_physics::simulate::{ProjectorKind, Simulator, SlicePipeline};
    use ndarray::Array3;

    /// Correlation of two maps' Fourier coefficients in shells of radius (index units) in
    /// `lo..hi`: a plain FSC over a band, to tell maps apart.
    fn band_correlation(a: &Volume, b: &Volume, lo: f64, hi: f64) -> f64 {
        let n = a.box_size();
        let fa = fft3(a);
        let fb = fft3(b);
        let (mut num, mut na, mut nb) = (0.0, 0.0, 0.0);
        for ((idx, x), y) in fa.indexed_iter().zip(fb.iter()) {
            let f = |i: usize| mcg_physics::fourier::signed_freq(i, n) as f64;
            let r = (f(idx.0).powi(2) + f(idx.1).powi(2) + f(idx.2).powi(2)).sqrt();
            if r >= lo && r < hi {
                num += (x * y.conj()).re;
                na += x.norm_sqr();
                nb += y.norm_sqr();
            }
        }
        num / (na * nb).sqrt()
    }

    /// The 3D DFT of a map, axis by axis.
    fn fft3(v: &Volume) -> Array3<rustfft::num_complex::Complex64> {
        let n = v.box_size();
        let mut data = v
            .data()
            .mapv(|x| rustfft::num_complex::Complex64::new(f64::from(x), 0.0));
        let fft = rustfft::FftPlanner::new().plan_fft_forward(n);
        for axis in 0..3 {
            for mut lane in data.lanes_mut(ndarray::Axis(axis)) {
                let mut buf: Vec<_> = lane.iter().copied().collect();
                fft.process(&mut buf);
                lane.iter_mut().zip(buf).for_each(|(d, b)| *d = b);
            }
        }
        data
    }

    fn rel(a: ndarray::ArrayView2<f32>, b: ndarray::ArrayView2<f32>) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (d / n).sqrt()
    }

    #[test]
    fn hsp90_open_and_closed_maps_differ_beyond_20_angstrom() {
        let Some(dir) = mcg_testdata::shared("structures/hsp90") else {
            return;
        };
        let m = Molecule::load(hsp90_continuous(), &dir).unwrap();
        let states = m.ground_truth_states(21);
        assert_eq!(states.len(), 21);
        assert_eq!(states[0].0, "beta_00");
        assert_eq!(states[20].0, "beta_20");
        assert_eq!(states[7].1.values, vec![7.0]);
        let cfg = DensityConfig::new(32, 5.0);
        let closed = m.density(&states[0].1, &cfg).unwrap();
        let open = m.density(&states[20].1, &cfg).unwrap();
        // Beyond 20 Å is shell radius > N·apix/20 = 8.
        let c = band_correlation(&closed, &open, 8.0, 16.0);
        assert!(c < 0.7, "open vs closed beyond 20 Å: {c}");
        let same = band_correlation(&closed, &closed, 8.0, 16.0);
        assert!((same - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_fixed_parameter_makes_one_ground_truth_state() {
        let mut landscape = hsp90_continuous();
        landscape.parameters[0].distribution = crate::landscape::Distribution::Fixed { value: 0.0 };
        let m = Molecule::hsp90_phantom(landscape).unwrap();
        let states = m.ground_truth_states(21);
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].0, "beta_00");
        assert_eq!(states[0].1.values, vec![0.0]);
    }

    #[test]
    fn batch_slices_match_simulating_each_conformations_map() {
        // The phantom through the rigid-body path vs the moved atoms' map through the plain
        // simulator: the same images up to the projectors' interpolation error.
        let m = Molecule::hsp90_phantom(hsp90_continuous()).unwrap();
        let cfg = DensityConfig::new(32, 5.0);
        let projector = m.projector(&cfg, 2).unwrap();
        let pipeline = SlicePipeline::new(32, 5.0);
        for i in 0..4u64 {
            let c = m.conformation(9, i);
            let params = vec![mcg_physics::simulate::RandomImaging::default().draw(9, i)];
            let mut fast = Array3::zeros((1, 32, 32));
            let batch = std::slice::from_ref(&c);
            pipeline.clean(&projector.batch(batch), &params, true, fast.view_mut());
            let volume = m.density(&c, &cfg).unwrap();
            let mut direct = Array3::zeros((1, 32, 32));
            Simulator::new(&volume, ProjectorKind::Fourier).clean(&params, true, direct.view_mut());
            let e = rel(
                fast.index_axis(ndarray::Axis(0), 0),
                direct.index_axis(ndarray::Axis(0), 0),
            );
            assert!(e < 0.02, "particle {i} (β = {:.2}°): {e}", c.values[0]);
        }
    }

    #[test]
    fn discrete_presets_number_their_classes() {
        let m = Molecule::hsp90_phantom(hsp90_discrete()).unwrap();
        let mut counts = [0usize; 3];
        for i in 0..2000 {
            let c = m.conformation(3, i);
            let class = m.class_of(&c).unwrap() as usize;
            assert_eq!(c.values[0], if class == 1 { 0.0 } else { 20.0 });
            counts[class] += 1;
        }
        let open = counts[2] as f64 / 2000.0;
        assert!(
            (open - 0.75).abs() < 4.0 * (0.1875f64 / 2000.0).sqrt(),
            "{open}"
        );
        assert!(
            Molecule::hsp90_phantom(hsp90_continuous())
                .unwrap()
                .class_of(&Conformation {
                    values: vec![3.5],
                    model: None
                })
                .is_none()
        );
    }

    #[test]
    fn discrete_models_give_one_state_each() {
        let Some(dir) = mcg_testdata::shared("structures/adk") else {
            return;
        };
        let l = Landscape {
            name: "adk".into(),
            structures: vec![],
            bodies: vec![],
            motions: vec![],
            parameters: vec![],
            discrete_models: Some(vec![
                DiscreteModel {
                    name: "closed".into(),
                    path: "adk_closed.pdb".into(),
                    weight: 1.0,
                },
                DiscreteModel {
                    name: "open".into(),
                    path: "adk_open.pdb".into(),
                    weight: 3.0,
                },
            ]),
        };
        let m = Molecule::load(l, &dir).unwrap();
        let states = m.ground_truth_states(21);
        let names: Vec<&str> = states.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["model_1_closed", "model_2_open"]);
        let cfg = DensityConfig::new(32, 2.5);
        let closed = m.density(&states[0].1, &cfg).unwrap();
        let open = m.density(&states[1].1, &cfg).unwrap();
        assert!(band_correlation(&closed, &open, 4.0, 16.0) < 0.9);
        let projector = m.projector(&cfg, 2).unwrap();
        assert_eq!(projector.box_size(), 32);
        let classes: Vec<u32> = (0..400)
            .map(|i| m.class_of(&m.conformation(1, i)).unwrap())
            .collect();
        let open_share = classes.iter().filter(|&&c| c == 2).count() as f64 / 400.0;
        assert!((open_share - 0.75).abs() < 0.09, "{open_share}");
    }

    fn one_chain_landscape(bodies: Vec<Body>, motions: Vec<Motion>) -> Landscape {
        Landscape {
            name: "t".into(),
            structures: vec!["x.pdb".into()],
            bodies,
            motions,
            parameters: vec![Parameter {
                name: "a".into(),
                distribution: Distribution::Uniform {
                    min: 0.0,
                    max: 10.0,
                },
            }],
            discrete_models: None,
        }
    }

    fn body(name: &str, chain: &str, residues: Option<(i32, i32)>) -> Body {
        Body {
            name: name.into(),
            selection: Selection {
                chain: chain.into(),
                residues,
            },
        }
    }

    fn hinge(body: &str) -> Motion {
        Motion::Hinge {
            body: body.into(),
            axis: [0.0, 0.0, 1.0],
            pivot: [0.0; 3],
            parameter: "a".into(),
        }
    }

    #[test]
    fn bad_bodies_are_named_errors() {
        let atoms = crate::phantom::hsp90_phantom();
        let build = |l: Landscape| {
            Molecule::from_models(l, vec![atoms.clone()], vec![], StructureSource::Phantom)
                .unwrap_err()
                .to_string()
        };
        let msg = build(one_chain_landscape(vec![body("x", "Z", None)], vec![]));
        assert!(
            msg.contains("bodies[0].selection") && msg.contains("selects no atom"),
            "{msg}"
        );
        let msg = build(one_chain_landscape(
            vec![
                body("x", "A", Some((1, 300))),
                body("y", "A", Some((200, 677))),
            ],
            vec![],
        ));
        assert!(
            msg.contains("bodies[1].selection") && msg.contains("already in body"),
            "{msg}"
        );
        let msg = build(one_chain_landscape(
            vec![body("x", "A", None)],
            vec![hinge("x"), hinge("x")],
        ));
        assert!(
            msg.contains("motions[1]") && msg.contains("already has a motion"),
            "{msg}"
        );
    }

    #[test]
    fn unselected_atoms_stay_fixed() {
        // Only the N-terminal domain of chain A moves; everything else is the fixed rest.
        let atoms = crate::phantom::hsp90_phantom();
        let l = one_chain_landscape(vec![body("ntd", "A", Some((12, 220)))], vec![hinge("ntd")]);
        let m = Molecule::from_models(l, vec![atoms.clone()], vec![], StructureSource::Phantom)
            .unwrap();
        assert_eq!(m.atom_count(), atoms.atoms.len());
        let c = Conformation {
            values: vec![10.0],
            model: None,
        };
        let moved = m.conformation_atoms(&c).unwrap();
        let still = m
            .conformation_atoms(&Conformation {
                values: vec![0.0],
                model: None,
            })
            .unwrap();
        let changed = moved.iter().zip(&still).filter(|(a, b)| a.0 != b.0).count();
        assert_eq!(changed, atoms.select("A", 12..=220).atoms.len());
    }
}
