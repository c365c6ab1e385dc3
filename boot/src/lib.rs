//! Host side of the hypervisor: builds the bare-metal crates, packs the VM
//! configuration and guest images into the boot package (the bootloader's
//! ramdisk), makes UEFI and BIOS disk images, runs them in QEMU or Bochs, and
//! flashes them to USB sticks.
//!
//! `src/main.rs` is the command line over this library; the integration tests
//! in `tests/` use the same library to build and boot images.

#![forbid(unsafe_code)]
pub mod cli;
pub mod config;
pub mod ctl;
pub mod files;
pub mod flash;
pub mod image;
pub mod kernel_build;
pub mod pack;
pub mod run;

use std::fmt;
use std::path::Path;

/// Why a host-side step failed.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        detail: String,
    },
    /// A program could not be started.
    Tool {
        /// The program (or command line).
        tool: String,
        /// What went wrong.
        detail: String,
    },
    /// A program the step needs is not installed.
    MissingTool {
        /// The program or file.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// Building the kernel or guests failed.
    Build(String),
    /// Creating a disk image failed.
    Image(String),
    /// The VM configuration is invalid (each line names the VM and field).
    Config(String),
    /// The command line was wrong.
    Usage(String),
    /// Flashing refused or failed.
    Flash(flash::FlashError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Io {
            path: config::shown(path),
            detail: e.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, detail } => write!(f, "{path}: {detail}"),
            Error::Tool { tool, detail } => write!(f, "cannot run {tool}: {detail}"),
            Error::MissingTool { tool, package } => {
                write!(f, "{tool} not found: install the Debian package(s) `{package}` (apt-get install {package})")
            }
            Error::Build(s) => write!(f, "build failed: {s}"),
            Error::Image(s) => write!(f, "disk image: {s}"),
            Error::Config(s) => write!(f, "invalid VM configuration:\n{s}"),
            Error::Usage(s) => write!(f, "{s}"),
            Error::Flash(e) => write!(f, "flash: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<flash::FlashError> for Error {
    fn from(e: flash::FlashError) -> Self {
        Error::Flash(e)
    }
}
