//! Choosing where tensors live: the CPU, or a CUDA GPU when libtorch has CUDA and one is visible.
//!
//! The project's libtorch cache holds the CPU libraries only; `libtorch_cuda.so` comes from a
//! CUDA-enabled libtorch 2.11.0 on the library path (e.g. a PyTorch 2.11.0 installation's
//! `torch/lib`). The linker drops it from the binary (nothing references it by name), so it is
//! loaded here explicitly before CUDA is asked for.

use std::sync::OnceLock;

use tch::Device;

use crate::TrainError;

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU; an error when there is none.
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown device {other:?}: expected cpu, cuda or auto"
            )),
        }
    }
}

/// The outcome of loading `libtorch_cuda.so`: `Ok` or the loader's message.
fn load_cuda() -> &'static Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid C string; the handle is kept open for the process's life.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let err = unsafe { libc::dlerror() };
            let message = if err.is_null() {
                "unknown error".to_string()
            } else {
                // SAFETY: non-null, NUL-terminated, valid until the next dl call on this thread.
                unsafe { std::ffi::CStr::from_ptr(err) }
                    .to_string_lossy()
                    .into_owned()
            };
            Err(message)
        } else {
            Ok(())
        }
    })
}

/// Whether a CUDA GPU is usable (loading libtorch's CUDA library first).
pub fn cuda_available() -> bool {
    load_cuda().is_ok() && tch::Cuda::is_available()
}

/// Resolves a choice to a device. `Cuda` fails with the reason when no GPU is usable.
pub fn select(choice: DeviceChoice) -> Result<Device, TrainError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if cuda_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        DeviceChoice::Cuda => {
            if let Err(e) = load_cuda() {
                return Err(TrainError::NoGpu(format!(
                    "libtorch's CUDA library could not be loaded ({e}); a CUDA-enabled libtorch \
                     2.11.0 must be on the library path"
                )));
            }
            if !tch::Cuda::is_available() {
                return Err(TrainError::NoGpu(
                    "libtorch has CUDA but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)".into(),
                ));
            }
            Ok(Device::Cuda(0))
        }
    }
}

/// Sets the number of CPU threads libtorch uses (intra-op).
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads.max(1) as i32);
}
