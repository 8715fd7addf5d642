//! Opening the file a request names so that it can never be outside the
//! root: `openat2(2)` with `RESOLVE_BENEATH` resolves the path under the
//! root's descriptor, and the kernel refuses any `..` or symlink that would
//! leave it while it resolves. Nothing can be swapped in between a check and
//! the open (a check by path, then an open by path, let someone who can write
//! under the root replace a directory with a symlink in between). Kernels
//! without `openat2` (before 5.6, or a seccomp filter that refuses it) get
//! that check by path.
//!
//! Every open is non-blocking, so a FIFO under the root cannot hold a thread,
//! and only regular files are served.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// What a request's path names.
// Made once per request and matched at once: boxing the file would cost an
// allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Found {
    /// A regular file, its metadata, and its name under the root (the
    /// directory's `index.html` for a directory).
    File {
        file: File,
        meta: Metadata,
        name: PathBuf,
    },
    /// A directory asked for without its trailing slash.
    Directory,
}

/// Set once `openat2` is found missing: every later open checks by path.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Finds `rel` under `root`; `slash`: the request's path ends with `/`.
/// Blocking (run it on the blocking pool). Any failure is "not found".
pub fn find(root: &Path, rel: &Path, slash: bool) -> io::Result<Found> {
    let (file, meta) = open(root, rel)?;
    if meta.is_dir() {
        if !slash {
            return Ok(Found::Directory);
        }
        let name = rel.join("index.html");
        let (file, meta) = open(root, &name)?;
        return regular(file, meta, name);
    }
    if slash {
        // `file/` names a directory that is not there (ENOTDIR to nginx's
        // open): one document under two URLs would confuse caches and
        // relative links.
        return Err(io::ErrorKind::NotFound.into());
    }
    regular(file, meta, rel.to_path_buf())
}

fn regular(file: File, meta: Metadata, name: PathBuf) -> io::Result<Found> {
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok(Found::File { file, meta, name })
}

fn open(root: &Path, rel: &Path) -> io::Result<(File, Metadata)> {
    let file = if NO_OPENAT2.load(Ordering::Relaxed) {
        checked(root, rel)?
    } else {
        match beneath(root, rel) {
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                tracing::warn!("openat2 is unavailable: static files are checked by path");
                checked(root, rel)?
            }
            r => r?,
        }
    };
    let meta = file.metadata()?;
    Ok((file, meta))
}

fn flags() -> OFlags {
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY
}

/// The kernel's check: resolution may not leave `root`.
pub(super) fn beneath(root: &Path, rel: &Path) -> Result<File, rustix::io::Errno> {
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let fd = rustix::fs::openat2(&dir, rel, flags(), Mode::empty(), how)?;
    Ok(File::from(fd))
}

/// The check by path, where `openat2` is missing: the resolved path must
/// still be under the resolved root.
pub(super) fn checked(root: &Path, rel: &Path) -> io::Result<File> {
    let root = std::fs::canonicalize(root)?;
    let real = std::fs::canonicalize(root.join(rel))?;
    if !real.starts_with(&root) {
        return Err(io::ErrorKind::NotFound.into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32)
        .open(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of opening agree: symlinks within the root are followed,
    /// out of it refused.
    #[test]
    fn both_openers_keep_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", root.join("in.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("out.txt")).unwrap();
        std::os::unix::fs::symlink("../../secret.txt", root.join("sub/up.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("sub/parent")).unwrap();
        for ok in ["sub/a.txt", "in.txt"] {
            assert!(beneath(&root, Path::new(ok)).is_ok(), "{ok}");
            assert!(checked(&root, Path::new(ok)).is_ok(), "{ok}");
        }
        for out in ["out.txt", "sub/up.txt", "sub/parent/secret.txt"] {
            assert!(beneath(&root, Path::new(out)).is_err(), "{out}");
            assert!(checked(&root, Path::new(out)).is_err(), "{out}");
        }
    }
}
