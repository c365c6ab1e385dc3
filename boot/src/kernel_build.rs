//! Builds the bare-metal crates (`kernel`, `guests`) in their own cargo
//! invocation for `x86_64-unknown-none`.
//!
//! Why a separate invocation: cargo 1.96 cannot mix `-Zbuild-std` with artifact
//! dependencies or per-package `forced-target` (it panics), so the host tool drives
//! the bare-metal build itself. The target directory is separate too
//! (`target/baremetal`), so this nested cargo never waits on the lock of the cargo
//! that runs us.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Names of the guest programs in `kernel/guests/src/bin`, in build order.
pub const GUEST_PROGRAMS: &[&str] = &[
    "hello", "counter", "cpuid", "msr", "escape", "hvmem", "triple", "realmode", "spin", "bench",
    "pingpong",
];

/// What the bare-metal build produced.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The kernel ELF, handed to the bootloader.
    pub kernel: PathBuf,
    /// Folder holding one ELF per guest program (see [`GUEST_PROGRAMS`]).
    pub guests_dir: PathBuf,
}

impl Artifacts {
    /// Path of a guest program's ELF.
    pub fn guest(&self, name: &str) -> PathBuf {
        self.guests_dir.join(name)
    }
}

/// The repository root (the workspace that holds `kernel/`).
pub fn repo_root() -> PathBuf {
    if let Ok(root) = std::env::var("HV_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the kernel and the guest programs (release profile) and returns their paths.
///
/// `HV_BUILD_STD=1` (set by `boot/toolchain.sh` when the toolchain has no
/// prebuilt `x86_64-unknown-none` library) adds `-Zbuild-std`.
pub fn build(root: &Path) -> Result<Artifacts, Error> {
    let target_dir = root.join("target").join("baremetal");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "kernel", "-p", "guests"])
        .args(["--target", "x86_64-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    if std::env::var("HV_BUILD_STD").map(|v| v == "1").unwrap_or(false) {
        cmd.args([
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
        ]);
    }
    // Frame pointers make the crash report's backtrace possible.
    cmd.env("CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS", "-C force-frame-pointers=yes");
    // The outer cargo's per-package variables must not leak into the inner build.
    for var in ["CARGO_PRIMARY_PACKAGE", "CARGO_MANIFEST_DIR", "CARGO_PKG_NAME"] {
        cmd.env_remove(var);
    }
    eprintln!("==> building kernel and guests (x86_64-unknown-none, release)");
    let status = cmd
        .status()
        .map_err(|e| Error::Tool { tool: "cargo".into(), detail: e.to_string() })?;
    if !status.success() {
        return Err(Error::Build(format!("cargo build of kernel/guests failed ({status})")));
    }
    let out = target_dir.join("x86_64-unknown-none").join("release");
    let artifacts = Artifacts { kernel: out.join("kernel"), guests_dir: out.clone() };
    if !artifacts.kernel.is_file() {
        return Err(Error::Build(format!("kernel ELF missing at {}", artifacts.kernel.display())));
    }
    Ok(artifacts)
}
