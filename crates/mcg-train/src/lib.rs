//! The Multi-CryoGAN trainer on libtorch (`tch`): the differentiable twin of the physics crate,
//! the generator and discriminator, the WGAN-GP losses and the training loop.
//!
//! Only this crate (and the CLI that links it) depends on libtorch.

pub mod adam;
pub mod device;
pub mod forward;
pub mod invariant;
pub mod models;
pub mod run;
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
    /// A setting is invalid.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
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
