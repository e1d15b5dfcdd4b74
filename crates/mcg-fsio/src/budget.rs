//! What the machine has: memory available to this process and free disk space, so that a
//! command can refuse, before it starts, work that would not fit, naming the option, the size
//! it implies and what there is (instead of an allocation abort or a full disk hours later).

use std::path::Path;

/// Bytes of memory this process can still use: the kernel's `MemAvailable`, lowered to the
/// room left under the cgroup v2 memory limit of `/sys/fs/cgroup` where there is one (its
/// working set: use less reclaimable file cache). cgroup v1 and nested limits are not read. `None` where neither can be
/// read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?
        * 1024;
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    // The cgroup's use counts its file cache, which the kernel reclaims under pressure: the
    // working set is the use less the inactive file pages (as container runtimes reckon it).
    let inactive_file = std::fs::read_to_string("/sys/fs/cgroup/memory.stat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("inactive_file "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let cgroup_room = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(current)) => {
            Some(max.saturating_sub(current.saturating_sub(inactive_file)))
        }
        _ => None,
    };
    Some(cgroup_room.map_or(available, |room| room.min(available)))
}

/// The `VmHWM:` line of a Linux `/proc/PID/status` text: the process's peak resident memory
/// (its high-water mark), KiB. `None` when the text has no such line (a zombie, not Linux).
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Peak resident memory of this process, MiB ([`vm_hwm_kib`] of `/proc/self/status`), for
/// reports; `None` where /proc does not show it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(vm_hwm_kib(&status)? as f64 / 1024.0)
}

/// Bytes free to an unprivileged writer on the file system holding `path` (or, when `path`
/// does not exist yet, its nearest existing folder). `None` where it cannot be told.
pub fn free_disk(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            break;
        }
        p = match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if p == Path::new(".") {
            break;
        }
    }
    let s = rustix::fs::statvfs(p).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// A byte count for people: `1.5 GB`, `133 GB`, `12 kB` (SI units).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes.max(0.0);
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses `bytes` of memory for `what` (the option and its value, e.g. "--box 100000") when
/// the machine does not have them available; the error says the size, what there is and what
/// needs it.
pub fn check_memory(what: &str, purpose: &str, bytes: f64) -> Result<(), String> {
    match available_memory() {
        Some(have) if bytes > have as f64 => Err(format!(
            "{what}: {purpose} needs about {} of memory, and this machine has {} available",
            human(bytes),
            human(have as f64)
        )),
        // Beyond what any address space holds, even where the machine cannot be asked.
        None if bytes > 2f64.powi(62) => Err(format!(
            "{what}: {purpose} needs about {} of memory",
            human(bytes)
        )),
        _ => Ok(()),
    }
}

/// Refuses to write `bytes` below `folder` for `what` when its file system has less free.
pub fn check_disk(what: &str, purpose: &str, bytes: f64, folder: &Path) -> Result<(), String> {
    match free_disk(folder) {
        Some(free) if bytes > free as f64 => Err(format!(
            "{what}: {purpose} needs about {} of disk in {}, which has {} free",
            human(bytes),
            folder.display(),
            human(free as f64)
        )),
        _ => Ok(()),
    }
}

/// Reads a whole file (a metadata file: STAR, `.cs`, a stack list, a landscape, a PDB) after
/// checking that its size fits in the memory available, so that a huge or runaway file is an
/// error naming it instead of an allocation abort. The parsed form may take a few times the
/// file's size: the bound is a quarter of the available memory.
pub fn read_whole(path: &Path) -> Result<Vec<u8>, crate::FsError> {
    let fail = |source: std::io::Error| crate::FsError {
        path: path.to_path_buf(),
        action: "read",
        source,
    };
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if let Some(have) = available_memory()
        && len > have / 4
    {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!(
                "the file is {}; reading and parsing it needs several times that, and this \
                 machine has {} of memory available",
                human(len as f64),
                human(have as f64)
            ),
        )));
    }
    std::fs::read(path).map_err(fail)
}

/// [`read_whole`] as UTF-8 text.
pub fn read_whole_text(path: &Path) -> Result<String, crate::FsError> {
    String::from_utf8(read_whole(path)?).map_err(|e| crate::FsError {
        path: path.to_path_buf(),
        action: "read",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(12.0), "12 B");
        assert_eq!(human(1500.0), "1.5 kB");
        assert_eq!(human(133e9), "133 GB");
        assert_eq!(human(8.2e18), "8200 PB");
    }

    #[test]
    fn peak_memory_is_read_from_proc_status() {
        let status = "Name:\tmulticryogan\nVmPeak:\t  900 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(204_800));
        assert_eq!(vm_hwm_kib("Name:\tzombie\nState:\tZ\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t many kB\n"), None);
        if Path::new("/proc/self/status").is_file() {
            // This test process holds at least its own code and stack.
            assert!(
                peak_rss_mib().is_some_and(|mib| mib > 0.1),
                "{:?}",
                peak_rss_mib()
            );
        }
    }

    #[test]
    fn the_machine_is_measured_and_absurd_requests_refused() {
        if let Some(m) = available_memory() {
            assert!(m > 1 << 20, "{m} bytes available");
        }
        let err = check_memory("--box 100000", "the volume", 8e15).unwrap_err();
        assert!(
            err.contains("--box 100000") && err.contains("8.0 PB"),
            "{err}"
        );
        assert!(check_memory("--n 1", "one image", 4096.0).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let free = free_disk(dir.path()).expect("statvfs works here");
        assert!(free > 0);
        let err =
            check_disk("--n 1e12", "the stack", 1e30, &dir.path().join("not/yet")).unwrap_err();
        assert!(err.contains("free") && err.contains("--n 1e12"), "{err}");
        assert!(check_disk("--n 1", "one image", 1.0, dir.path()).is_ok());
    }
}
