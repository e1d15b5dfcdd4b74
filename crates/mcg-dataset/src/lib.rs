//! Particle data sets as a library: what the CLI's `synth`, `merge-shards`, `project` and
//! `convert` do, callable from any Rust program, and opening a particle set of any format.
//!
//! - [`synth`]: synthetic sets of a conformational landscape from [`synth::SynthSettings`]
//!   (whole, one shard, or all shards and their merge, [`merge::merge_shards`]);
//! - [`project`]: images of one volume, at a STAR file's poses or random ones; [`ctf`]: each
//!   particle's CTF as an image;
//! - [`convert`]: particle sets between STAR+MRCS, the HDF5 container and cryoSPARC `.cs`,
//!   optionally Fourier-cropped to a smaller box ([`downsample`]);
//! - [`input`]: opening a particle set of any supported kind, its images checked finite;
//!   [`info`]: what a file (an MRC map or stack, or a particle set) holds;
//! - [`folder`]: the data-set folder's files as types (paths, manifest, ground truth);
//! - [`sinks`]: forming images batch by batch while a second thread writes them;
//! - [`guard`]: the checks made before anything is written (inputs never overwritten,
//!   memory and disk measured); [`monitor`]: progress and cancellation; [`hint`]: errors
//!   that carry a likely fix.
//!
//! Errors are [`anyhow::Error`]s naming the file, the field and what was expected; a
//! [`hint::Hint`] in the chain is a likely fix.
//!
//! # Example: a small synthetic set
//!
//! ```
//! use mcg_dataset::folder::DataSetDir;
//! use mcg_dataset::monitor::Silent;
//! use mcg_dataset::synth::{LandscapeSource, Preset, SynthSettings, synthesize};
//!
//! let dir = tempfile::tempdir()?;
//! let mut settings = SynthSettings::new(
//!     LandscapeSource::Preset(Preset::Hsp90Discrete),
//!     64,
//!     dir.path().join("set"),
//! );
//! settings.box_size = 16;
//! settings.apix = 10.0;
//! settings.states = 2;
//! settings.calibration_images = 16;
//! settings.seed = 7;
//! synthesize(&settings, &Silent::new())?;
//!
//! let set = DataSetDir::new(dir.path().join("set"));
//! let manifest = set.read_manifest().expect("a finished set has a manifest");
//! assert_eq!(manifest.settings["images"], 64);
//! assert!(manifest.noise.sigma.is_some_and(|s| s > 0.0));
//! use mcg_formats::ImageSource;
//! let (particles, images) = mcg_dataset::input::particles(&set.star(), &Default::default())?;
//! assert_eq!((particles.len(), images.len()), (64, 64));
//! # Ok::<(), anyhow::Error>(())
//! ```

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

pub mod builtin;
pub mod convert;
pub mod ctf;
pub mod downsample;
pub mod folder;
pub mod guard;
pub mod halves;
pub mod hint;
pub mod info;
pub mod input;
pub mod inspect;
pub mod merge;
pub mod monitor;
pub mod project;
pub mod sinks;
pub mod synth;
