//! The Multi-CryoGAN trainer on libtorch (`tch`): the differentiable twin of the physics crate,
//! the generator and discriminator, the WGAN-GP losses and the training loop.
//!
//! The device physics (forward model, the data's physics, the device choice) lives in
//! `mcg-forward`, which the classification shares; `forward` is re-exported here.

pub mod adam;
mod checkpoint;
pub mod data;
pub mod device;
pub use mcg_forward::forward;
pub mod losses;
pub mod models;
pub mod probe;
pub mod run;
pub mod settings;
pub mod simulate;
pub mod train;

pub use device::{DeviceChoice, select};

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A GPU was requested and none is usable.
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A setting is invalid, or a run folder or checkpoint does not fit the settings.
    #[error("{0}")]
    Invalid(String),
    /// The operating system refused an operation on a run's file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a run's file atomically failed.
    #[error(transparent)]
    Fs(#[from] mcg_fsio::FsError),
    /// A run folder's file (config.json, metrics.jsonl) that cannot be read.
    #[error(transparent)]
    RunFile(#[from] mcg_runfiles::FileError),
    /// Reading particle images or writing a map failed.
    #[error(transparent)]
    Format(#[from] mcg_formats::FormatError),
    /// A volume could not be formed.
    #[error(transparent)]
    Physics(#[from] mcg_physics::PhysicsError),
    /// A loss became NaN or infinite: training stopped at that step.
    #[error(
        "step {step}: {loss} = {value}, not a finite number; training stopped and {kept}. \
         Non-finite pixels in the particle images or the noise stack, or a learning rate too \
         large, cause this"
    )]
    NonFinite {
        /// The generator step.
        step: u64,
        /// The loss, e.g. `d_loss`.
        loss: &'static str,
        /// Its value.
        value: f64,
        /// What became of the checkpoint.
        kept: &'static str,
    },
}

#[cfg(test)]
mod tests {
    /// Errors of the run's files keep their cause, so a caller can tell a full disk from a bad
    /// setting, and read the same message as before.
    #[test]
    fn file_errors_keep_their_source() {
        use std::error::Error as _;
        let io = crate::TrainError::Io {
            path: "run/volumes".into(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"),
        };
        assert_eq!(io.to_string(), "run/volumes: no space left");
        let cause = io.source().expect("the I/O error");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::StorageFull)
        );
        let format =
            crate::TrainError::from(mcg_formats::FormatError::invalid("a.mrcs", "NZ", "0"));
        assert_eq!(format.to_string(), "a.mrcs: NZ: 0");
        assert!(matches!(format, crate::TrainError::Format(_)));
    }

    #[test]
    fn libtorch_is_linked_and_computes() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let s: f64 = (&t * &t).sum(tch::Kind::Float).double_value(&[]);
        assert_eq!(s, 14.0);
        assert_eq!(
            crate::select(crate::DeviceChoice::Cpu).unwrap(),
            tch::Device::Cpu
        );
    }
}
