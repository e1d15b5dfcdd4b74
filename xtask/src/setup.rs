//! Installs the system libraries the build needs, when they are missing.
//!
//! That is HDF5 (for `mcg-h5`, through the `hdf5-metno` crate) and `pkg-config`, which
//! locates it, then libtorch for the trainer ([`crate::libtorch`]). On Debian and Ubuntu they come from `apt-get`; as root it runs directly,
//! otherwise through `sudo` when available. Elsewhere the error says what to install.

use anyhow::{Result, bail};

use crate::util;

/// Debian packages and the check that says each is present.
const PACKAGES: &[(&str, &str)] = &[("pkg-config", "pkg-config"), ("libhdf5-dev", "hdf5")];

pub fn run() -> Result<()> {
    system_packages()?;
    crate::libtorch::ensure()?;
    Ok(())
}

fn system_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| !present(probe))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: missing {}", missing.join(", "));
    if util::output("apt-get", &["--version"]).is_none() {
        bail!(
            "missing system packages: {}\nhint: install HDF5 (1.10 or newer) and pkg-config with your system's package manager",
            missing.join(" ")
        );
    }
    let is_root = util::output("id", &["-u"]).is_some_and(|s| s.trim() == "0");
    let sudo: &[&str] = if is_root { &[] } else { &["sudo"] };
    let apt = |what: &str, args: &[&str]| -> Result<()> {
        let mut full: Vec<&str> = sudo.to_vec();
        full.extend(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        full.extend_from_slice(args);
        let (program, rest) = full.split_first().expect("non-empty");
        util::run_quiet(what, std::path::Path::new(program), rest)
    };
    apt("apt-get update", &["update", "-qq"])?;
    for pkg in &missing {
        apt(
            &format!("installing {pkg} (apt-get)"),
            &["install", "-y", "-qq", "--no-install-recommends", pkg],
        )?;
    }
    for probe in missing {
        if let Some((_, p)) = PACKAGES.iter().find(|(pkg, _)| *pkg == probe)
            && !present(p)
        {
            bail!("{probe} was installed but is still not found");
        }
    }
    Ok(())
}

fn present(probe: &str) -> bool {
    match probe {
        "pkg-config" => util::output("pkg-config", &["--version"]).is_some(),
        lib => util::output("pkg-config", &["--exists", lib]).is_some(),
    }
}
