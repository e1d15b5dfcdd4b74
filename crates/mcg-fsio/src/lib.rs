//! Atomic file writing, the one scheme every writer of the workspace uses, and the resources a
//! write or a computation needs ([`budget`]: memory and disk, checked before they are spent).
//!
//! A file is written under a hidden temporary name in its destination folder and renamed over
//! the destination once complete ([`Staged::commit`]), so a reader sees either the old file or
//! the whole new one, never a part. The temporary name records the process that made it,
//! `.mcgtmp-<pid>-<n>-<host>.<name>` (the destination's name last, so that its extension, which
//! some encoders read, is kept):
//!
//! - a writer that fails or is dropped unfinished (an error, or an interrupt that unwinds)
//!   removes its temporary file;
//! - a process that dies without unwinding (SIGKILL, a file-size limit, a power cut) leaves it,
//!   and the next writer into the same folder removes it ([`remove_stale`]): the first time a
//!   process stages a file in a folder, the temporary files there of processes of this host
//!   that no longer run are deleted, and each is logged on stderr.
//!
//! **Invariant:** nothing in this workspace writes a final output file in place; every writer
//! goes through [`Staged`] or [`write_atomic`].
//!
//! ```
//! use std::io::Write;
//!
//! let dir = tempfile::tempdir()?;
//! let dest = dir.path().join("notes.txt");
//! // Small files in one call.
//! mcg_fsio::write_atomic(&dest, b"first")?;
//! // Larger ones through a staged file: nothing appears at `dest` until `commit`.
//! let staged = mcg_fsio::Staged::new(&dest)?;
//! let mut file = staged.create()?;
//! file.write_all(b"second")?;
//! drop(file);
//! assert_eq!(std::fs::read(&dest)?, b"first");
//! staged.commit()?;
//! assert_eq!(std::fs::read(&dest)?, b"second");
//! // Dropped uncommitted, a staged file leaves nothing behind.
//! let abandoned = mcg_fsio::Staged::new(&dest)?;
//! abandoned.create()?;
//! drop(abandoned);
//! assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod budget;

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker that starts every temporary name.
const PREFIX: &str = ".mcgtmp-";

/// An I/O failure, naming the file and what was being done.
#[derive(Debug)]
pub struct FsError {
    /// The file (the destination, or the temporary file) concerned.
    pub path: PathBuf,
    /// What was being done, e.g. "create the temporary file".
    pub action: &'static str,
    /// The operating system's error.
    pub source: std::io::Error,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.action,
            self.source
        )
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn fail(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError {
        path,
        action,
        source,
    }
}

/// A file being staged for `dest`: a temporary path in `dest`'s folder, renamed over `dest` by
/// [`Staged::commit`] and removed when dropped uncommitted.
#[derive(Debug)]
pub struct Staged {
    dest: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl Staged {
    /// Reserves a temporary name for `dest` (nothing is created: write it with
    /// [`Staged::create`], or hand [`Staged::path`] to a library that creates the file itself).
    /// The first call for a folder removes the temporary files of dead processes there.
    pub fn new(dest: &Path) -> Result<Self, FsError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = dest.file_name().ok_or_else(|| FsError {
            path: dest.to_path_buf(),
            action: "stage a file",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
        })?;
        let folder = folder_of(dest);
        sweep_once(&folder);
        let tmp = folder.join(format!(
            "{PREFIX}{}-{}-{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            host_tag(),
            name.to_string_lossy()
        ));
        Ok(Self {
            dest: dest.to_path_buf(),
            tmp,
            done: false,
        })
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Creates the temporary file (it must not exist yet) for writing.
    pub fn create(&self) -> Result<File, FsError> {
        File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&self.tmp)
            .map_err(fail(&self.tmp, "create the temporary file"))
    }

    /// Flushes the temporary file to disk, renames it over the destination and makes the
    /// rename durable where the platform allows. On failure the temporary file is removed.
    pub fn commit(mut self) -> Result<(), FsError> {
        File::open(&self.tmp)
            .and_then(|f| f.sync_all())
            .map_err(fail(&self.tmp, "flush the temporary file to disk"))?;
        std::fs::rename(&self.tmp, &self.dest)
            .map_err(fail(&self.dest, "rename the temporary file into place"))?;
        self.done = true;
        sync_folder(&folder_of(&self.dest));
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: the file is ours and unfinished, or was never created.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let staged = Staged::new(dest)?;
    let mut file = staged.create()?;
    file.write_all(bytes)
        .map_err(fail(staged.path(), "write the temporary file"))?;
    drop(file);
    staged.commit()
}

/// `dest`'s folder (`.` for a bare name).
fn folder_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `folder` durable where the platform allows; failure only weakens
/// durability.
fn sync_folder(folder: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(folder) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = folder;
}

/// A tag of this machine and process-id namespace (host name and the namespace's identity), so
/// that folders shared between machines (a cluster file system, where shards of one data set
/// are written at once) or between containers with their own process ids never lose a live
/// process's file to another's sweep: only files of our own tag are ever swept.
fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // FNV-1a, 64 bits: stable across runs and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.trim().bytes().chain([0]).chain(namespace.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The process id recorded in a temporary name of this host, or `None` when `name` is not one
/// of ours or was made on another host.
fn owner_on_this_host(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (id, _) = rest.split_once('.')?;
    let mut parts = id.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    (parts.next()? == host_tag()).then_some(pid)
}

/// Whether `name` is a temporary name of this scheme (of any process, any host).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Whether process `pid` is alive, or `None` where this cannot be told. Asked of the kernel
/// (signal 0), so that a `/proc` that hides other users' processes cannot make a live one look
/// dead; a process we may not signal exists.
fn alive(pid: u32) -> Option<bool> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    match rustix::process::test_kill_process(pid) {
        Ok(()) => Some(true),
        Err(rustix::io::Errno::SRCH) => Some(false),
        Err(rustix::io::Errno::PERM) => Some(true),
        Err(_) => None,
    }
}

/// Whether the file is owned by this process's user: only those are ever swept.
fn ours(meta: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.uid() == rustix::process::getuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Removes, in `folder` (not below it), the temporary files left by processes of this host (and
/// process-id namespace) and user that no longer run, and returns their paths. Each removal is
/// reported on stderr. Files of live processes, of other hosts, containers or users, and of
/// other programs are kept; so is everything where liveness cannot be told.
pub fn remove_stale(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_on_this_host) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) != Some(false) {
            continue;
        }
        if !entry.metadata().is_ok_and(|m| ours(&m)) {
            continue;
        }
        let path = entry.path();
        if std::fs::remove_file(&path).is_ok() {
            eprintln!(
                "removed {}, left unfinished by process {pid}, which no longer runs",
                path.display()
            );
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

/// Sweeps `folder` the first time this process stages a file there.
fn sweep_once(folder: &Path) {
    static SWEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let key = folder
        .canonicalize()
        .unwrap_or_else(|_| folder.to_path_buf());
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if swept.contains(&key) {
        return;
    }
    swept.push(key);
    drop(swept);
    remove_stale(folder);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary name as process `pid` of this host would have made it.
    fn name_of(pid: u32, dest: &str) -> String {
        format!("{PREFIX}{pid}-0-{}.{dest}", host_tag())
    }

    #[test]
    fn commit_replaces_the_destination_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        std::fs::write(&dest, "old").unwrap();
        write_atomic(&dest, b"new").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_uncommitted_file_is_removed_and_the_destination_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.mrc");
        std::fs::write(&dest, "old").unwrap();
        let staged = Staged::new(&dest).unwrap();
        let mut f = staged.create().unwrap();
        f.write_all(b"half").unwrap();
        let tmp = staged.path().to_path_buf();
        assert!(tmp.exists());
        assert!(
            tmp.to_string_lossy().ends_with(".a.mrc"),
            "the extension is kept"
        );
        drop(staged);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    }

    #[test]
    fn names_are_distinct_within_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let (a, b) = (Staged::new(&dest).unwrap(), Staged::new(&dest).unwrap());
        assert_ne!(a.path(), b.path());
        assert_eq!(
            owner_on_this_host(&a.path().file_name().unwrap().to_string_lossy()),
            Some(std::process::id())
        );
    }

    #[test]
    fn stale_files_of_dead_processes_go_and_all_others_stay() {
        if alive(1).is_none() {
            return; // no /proc: liveness cannot be told, nothing is removed (checked below).
        }
        let dir = tempfile::tempdir().unwrap();
        // 4,194,304 is Linux's largest process id: 999,999,999 never runs.
        let dead = dir.path().join(name_of(999_999_999, "particles.mrcs"));
        let live = dir.path().join(name_of(1, "particles.mrcs"));
        let mine = dir.path().join(name_of(std::process::id(), "b.mrcs"));
        let other_host = dir
            .path()
            .join(format!("{PREFIX}999999999-0-zzzzzzzz.c.mrcs"));
        let unrelated = dir.path().join(".particles.mrcs.tmp");
        for p in [&dead, &live, &mine, &other_host, &unrelated] {
            std::fs::write(p, "x").unwrap();
        }
        assert_eq!(remove_stale(dir.path()), vec![dead.clone()]);
        assert!(!dead.exists());
        for p in [&live, &mine, &other_host, &unrelated] {
            assert!(p.exists(), "{} was removed", p.display());
        }
    }

    #[test]
    fn the_first_write_into_a_folder_sweeps_it() {
        if alive(1).is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(name_of(999_999_998, "a.star"));
        std::fs::write(&dead, "x").unwrap();
        write_atomic(&dir.path().join("a.star"), b"data").unwrap();
        assert!(!dead.exists());
    }

    #[test]
    fn a_path_without_a_file_name_is_an_error_naming_it() {
        let e = Staged::new(Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("names no file"), "{e}");
    }
}
