//! libtorch for the trainer (`tch` 0.24 needs PyTorch 2.11.0), taken from the package registry.
//!
//! No download site but PyPI is reachable, so libtorch comes from the `torch==2.11.0` wheel:
//! its `torch/lib` and `torch/include`, plus the two CUDA libraries its CPU library links to
//! even without a GPU (`libcudart.so.13`, `libcupti.so.13`, from the `nvidia-cuda-runtime` and
//! `nvidia-cuda-cupti` wheels pinned by torch 2.11.0's `cuda-toolkit==13.0.2`). The CUDA-only
//! libraries (`libtorch_cuda.so` and its kin, 550 MB) are left out: the binaries load
//! `libtorch_cuda.so` at run time when asked for a GPU, from a CUDA-enabled libtorch on the
//! library path.
//!
//! It goes to a cache outside the repository (`$MULTICRYOGAN_CACHE`, else
//! `$XDG_CACHE_HOME/multicryogan`, else `~/.cache/multicryogan`), is assembled under a
//! temporary name and renamed when complete, and the repository's ignored `.libtorch` link
//! points at it; `.cargo/config.toml` sets `LIBTORCH` to that link, so a plain `cargo build`
//! works once this has run, and the build scripts give the binaries a run path to it, so
//! nobody sets `LD_LIBRARY_PATH`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util;

/// The PyTorch release `tch` 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";

/// The wheels, as pip requirements.
const WHEELS: [&str; 3] = [
    "torch==2.11.0",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.0.85",
];

/// Libraries of `torch/lib` that only a GPU needs (loaded at run time when present).
const CUDA_ONLY: [&str; 6] = [
    "libtorch_cuda.so",
    "libtorch_cuda_linalg.so",
    "libc10_cuda.so",
    "libtorch_nvshmem.so",
    "libcaffe2_nvrtc.so",
    "libtorch_python.so",
];

/// The cache folder of this project's downloads.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MULTICRYOGAN_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("multicryogan"));
    }
    let home = std::env::var_os("HOME").context("neither MULTICRYOGAN_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/multicryogan"))
}

/// Makes sure libtorch is in the cache and linked from the repository as `.libtorch`;
/// returns its folder.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_dir()?.join(format!("libtorch-{TORCH_VERSION}-cpu"));
    if !dir.join("build-version").is_file() {
        install(&dir)?;
    }
    link(&dir)?;
    Ok(dir)
}

fn install(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("a cache subfolder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let wheels = parent.join(format!("wheels-{}", std::process::id()));
    let staging = parent.join(format!(".libtorch-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!(
        "xtask setup: fetching libtorch {TORCH_VERSION} from PyPI (a 530 MB wheel) into {}",
        dir.display()
    );
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| util::output(p, &["-m", "pip", "--version"]).is_some())
        .context(
            "no Python with pip found; libtorch is taken from the torch==2.11.0 wheel on PyPI\n\
             hint: install python3 and python3-pip (apt-get install python3-pip)",
        )?;
    let wheels_s = wheels.to_string_lossy().into_owned();
    let mut args = vec![
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        &wheels_s,
    ];
    args.extend(WHEELS);
    util::run_quiet(
        &format!("downloading the torch {TORCH_VERSION} wheel and two NVIDIA runtime wheels (pip)"),
        Path::new(python),
        &args,
    )?;
    let script = format!(
        r#"
import glob, os, sys, zipfile
wheels, out, cuda_only = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
lib = os.path.join(out, "lib")
os.makedirs(lib)
torch = glob.glob(os.path.join(wheels, "torch-{TORCH_VERSION}-*.whl"))
if len(torch) != 1: sys.exit("expected one torch wheel, found %r" % torch)
with zipfile.ZipFile(torch[0]) as z:
    for m in z.infolist():
        if m.is_dir(): continue
        for prefix, target in (("torch/lib/", "lib"), ("torch/include/", "include")):
            if m.filename.startswith(prefix):
                rel = m.filename[len(prefix):]
                if target == "lib" and rel in cuda_only: break
                dest = os.path.join(out, target, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with z.open(m) as src, open(dest, "wb") as dst:
                    while True:
                        chunk = src.read(1 << 22)
                        if not chunk: break
                        dst.write(chunk)
                break
for pattern, name in (("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")):
    found = glob.glob(os.path.join(wheels, pattern))
    if len(found) != 1: sys.exit("expected one %s wheel, found %r" % (pattern, found))
    with zipfile.ZipFile(found[0]) as z:
        members = [m for m in z.namelist() if m.endswith("/" + name)]
        if len(members) != 1: sys.exit("%s: no single %s" % (found[0], name))
        with open(os.path.join(lib, name), "wb") as dst: dst.write(z.read(members[0]))
with open(os.path.join(out, "build-version"), "w") as f: f.write("{TORCH_VERSION}\n")
"#
    );
    let staging_s = staging.to_string_lossy().into_owned();
    let unpack = wheels.join("unpack.py");
    std::fs::write(&unpack, script).with_context(|| format!("writing {}", unpack.display()))?;
    let result = util::run_quiet(
        "unpacking libtorch from the wheels",
        Path::new(python),
        &[
            &unpack.to_string_lossy(),
            &wheels_s,
            &staging_s,
            &CUDA_ONLY.join(","),
        ],
    );
    let _ = std::fs::remove_dir_all(&wheels);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.context("unpacking the libtorch wheels"));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving libtorch into {}", dir.display()))?;
    Ok(())
}

/// Points the repository's `.libtorch` at `dir` (replacing a stale link).
fn link(dir: &Path) -> Result<()> {
    let link = util::root().join(".libtorch");
    if std::fs::read_link(&link).is_ok_and(|t| t == dir) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        if link.is_dir() && !link.symlink_metadata()?.file_type().is_symlink() {
            bail!(
                "{} is a folder, not the link to the libtorch cache: remove it",
                link.display()
            );
        }
        std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(dir, &link)
        .with_context(|| format!("linking {} to {}", link.display(), dir.display()))
}
