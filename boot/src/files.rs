//! Reading files a user names (configurations, guest images) without trusting
//! them: only regular files are read, up to a size limit, and anything else
//! (a directory, `/dev/zero`, a FIFO, a disk) is refused by name before a
//! byte is read, so nothing blocks or fills memory.

use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// What kind of file system object `meta` describes, for messages.
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        return "a regular file";
    }
    if t.is_dir() {
        return "a directory";
    }
    if t.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_block_device() {
            return "a block device (a disk)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing at that path.
    Missing,
    /// Something other than a regular file.
    NotRegular {
        /// What it is ([`kind_of`]).
        kind: &'static str,
    },
    /// Larger than the caller's limit.
    TooLarge {
        /// Its size in bytes.
        len: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The OS refused.
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => write!(f, "no such file"),
            ReadError::NotRegular { kind } => write!(f, "{kind}, not a regular file"),
            ReadError::TooLarge { len, limit } => write!(
                f,
                "{} is larger than the limit of {}",
                hvcore::config::Size(*len),
                hvcore::config::Size(*limit)
            ),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            ReadError::Missing
        } else {
            ReadError::Io(e)
        }
    }
}

/// Opens `path` without blocking (a FIFO opened for reading waits for a
/// writer; with `O_NONBLOCK` it does not).
fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        /// Linux `O_NONBLOCK` (asm-generic/fcntl.h).
        const O_NONBLOCK: i32 = 0o4000;
        options.custom_flags(O_NONBLOCK);
    }
    options.open(path)
}

/// Reads the regular file at `path` if it holds at most `limit` bytes.
///
/// The path is inspected before it is opened (symbolic links followed), and the
/// opened file again, so that whatever the path names at either moment, only
/// a regular file is read, and never more than `limit` bytes of it.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let check = |meta: &Metadata| -> Result<u64, ReadError> {
        if !meta.is_file() {
            return Err(ReadError::NotRegular {
                kind: kind_of(meta),
            });
        }
        if meta.len() > limit {
            return Err(ReadError::TooLarge {
                len: meta.len(),
                limit,
            });
        }
        Ok(meta.len())
    };
    check(&fs::metadata(path)?)?;
    let file = open_nonblocking(path)?;
    let len = check(&file.metadata()?)?;
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut data)?;
    let read = data.len() as u64;
    if read > limit {
        // It grew while being read.
        return Err(ReadError::TooLarge { len: read, limit });
    }
    Ok(data)
}

/// Reads a UTF-8 text file of at most `limit` bytes (see [`read_bounded`]).
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, ReadError> {
    let data = read_bounded(path, limit)?;
    String::from_utf8(data).map_err(|e| {
        ReadError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hv-files-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_within_the_limit_are_read() {
        let dir = scratch("regular");
        let path = dir.join("a.bin");
        fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap(), [7u8; 100]);
        let err = read_bounded(&path, 99).unwrap_err();
        assert_eq!(
            err.to_string(),
            "100 bytes is larger than the limit of 99 bytes"
        );
        assert!(matches!(
            read_bounded(&dir.join("nope"), 10),
            Err(ReadError::Missing)
        ));
        fs::write(&path, b"text \xff").unwrap();
        let err = read_text_bounded(&path, 100).unwrap_err();
        assert!(
            err.to_string()
                .contains("not UTF-8 text (invalid byte at offset 5)"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_at_once() {
        let start = Instant::now();
        let err = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(err.to_string(), "a character device, not a regular file");
        let dir = scratch("special");
        let err = read_bounded(&dir, 1 << 20).unwrap_err();
        assert_eq!(err.to_string(), "a directory, not a regular file");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "mkfifo (coreutils) is needed"
        );
        let err = read_bounded(&fifo, 1 << 20).unwrap_err();
        assert_eq!(err.to_string(), "a FIFO (named pipe), not a regular file");
        // A symbolic link to a device is the device.
        let link = dir.join("zero-link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(
            read_bounded(&link, 10),
            Err(ReadError::NotRegular { .. })
        ));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
