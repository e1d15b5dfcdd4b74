//! Choosing where tensors live: the CPU, or a CUDA GPU when libtorch has CUDA and one is visible.
//!
//! The project's libtorch cache holds the CPU libraries only; `libtorch_cuda.so` comes from a
//! CUDA-enabled PyTorch 2.11.0 (looked for as `load_cuda` says). The linker would
//! drop it from the binary anyway (nothing references it by name), so it is loaded here
//! explicitly before CUDA is asked for.

use std::sync::OnceLock;

use tch::Device;

use crate::DeviceError;

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

/// The outcome of loading `libtorch_cuda.so`: `Ok` or the loaders' messages. Tried in order:
/// the library path (`LD_LIBRARY_PATH`, the binary's run path), the folder named by
/// `MULTICRYOGAN_TORCH_LIB`, and the `torch/lib` folder of the `python3` on the `PATH` when it
/// has PyTorch (its CUDA libraries come along through that folder's own run paths). The
/// library must come from PyTorch 2.11.0, the version the binary is built against.
fn load_cuda() -> &'static Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut errors = Vec::new();
        let mut candidates = vec!["libtorch_cuda.so".to_string()];
        if let Some(dir) = std::env::var_os("MULTICRYOGAN_TORCH_LIB") {
            candidates.push(format!("{}/libtorch_cuda.so", dir.to_string_lossy()));
        }
        if let Some(dir) = python_torch_lib() {
            candidates.push(format!("{dir}/libtorch_cuda.so"));
        }
        for name in candidates {
            match dlopen(&name) {
                Ok(()) => {
                    tracing::debug!(library = %name, "loaded libtorch's CUDA library");
                    return Ok(());
                }
                Err(e) => errors.push(e),
            }
        }
        Err(errors.join("; "))
    })
}

/// The `torch/lib` folder of the `python3` on the `PATH`, if it has PyTorch 2.11.
fn python_torch_lib() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?;
    let dir = lines.next()?;
    version.starts_with("2.11.").then(|| dir.to_string())
}

fn dlopen(name: &str) -> Result<(), String> {
    let c_name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: dlopen with a valid C string; the handle stays open for the process's life.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns a thread-local C string or null.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        Err(format!("{name}: unknown error"))
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next dl call on this thread.
        Err(unsafe { std::ffi::CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned())
    }
}

/// Whether a CUDA GPU is usable (loading libtorch's CUDA library first).
pub fn cuda_available() -> bool {
    load_cuda().is_ok() && tch::Cuda::is_available()
}

/// Resolves a choice to a device. `Cuda` fails with the reason when no GPU is usable.
pub fn select(choice: DeviceChoice) -> Result<Device, DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(if cuda_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        DeviceChoice::Cuda => {
            if let Err(e) = load_cuda() {
                return Err(DeviceError::NoGpu(format!(
                    "libtorch's CUDA library could not be loaded ({e}); install PyTorch 2.11.0 \
                     with CUDA for python3, or set MULTICRYOGAN_TORCH_LIB to its torch/lib folder"
                )));
            }
            if !tch::Cuda::is_available() {
                return Err(DeviceError::NoGpu(
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
