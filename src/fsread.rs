//! Reading the files a config names (the config itself, certificates, keys,
//! secrets, JWKS, OCSP responses, the ACME cache): regular files only, and
//! at most [`MAX_FILE`] bytes. A path that named a FIFO blocked the reload
//! that read it for as long as nobody wrote to it, and `/dev/zero` or a
//! huge file grew the serving process until the allocation failed.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest file a config may name: far past any certificate bundle
/// (the system's is ~200 KB), key or config.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// The bytes of the regular file at `path`, or an error that says why not
/// (its kind `NotFound` when it does not exist, as `std::fs::read`'s).
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    read_at_most(path, MAX_FILE)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn read_at_most(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // Looked at by path before it is opened: opening a FIFO for reading
    // waits for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB", max / (1024 * 1024)),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"secret").expect("write");
        assert_eq!(read(&ok).expect("read"), b"secret");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 3 * 1024 * 1024]).expect("write");
        let e = read_at_most(&big, 2 * 1024 * 1024).expect_err("too big");
        assert_eq!(e.to_string(), "larger than 2 MiB");

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        assert_eq!(
            read(&fifo).expect_err("fifo").to_string(),
            "not a regular file"
        );
        assert_eq!(
            read(Path::new("/dev/zero"))
                .expect_err("device")
                .to_string(),
            "not a regular file"
        );
        assert_eq!(
            read(dir.path()).expect_err("dir").to_string(),
            "not a regular file"
        );
        let gone = read(&dir.path().join("gone")).expect_err("missing");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }
}
