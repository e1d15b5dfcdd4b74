//! The device choice, from `mcg-forward` (shared with the classification), with the trainer's
//! error type.

pub use mcg_forward::device::{DeviceChoice, cuda_available, set_threads};

use crate::TrainError;

/// Resolves a choice to a device ([`mcg_forward::device::select`]). `Cuda` fails with the
/// reason when no GPU is usable.
pub fn select(choice: DeviceChoice) -> Result<tch::Device, TrainError> {
    mcg_forward::device::select(choice)
        .map_err(|mcg_forward::DeviceError::NoGpu(e)| TrainError::NoGpu(e))
}
