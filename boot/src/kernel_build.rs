//! Builds the bare-metal crates (`kernel`, `guests`) in their own cargo
//! invocation for `x86_64-unknown-none`.
//!
//! Why a separate invocation: cargo 1.96 cannot mix `-Zbuild-std` with artifact
//! dependencies or per-package `forced-target` (it panics), so the host tool drives
//! the bare-metal build itself. The target directory is separate too
//! (`target/baremetal`, see [`output_dir`]), so this nested cargo never waits on the lock of the cargo
//! that runs us.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Names of the guest programs in `kernel/guests/src/bin`, in build order.
pub const GUEST_PROGRAMS: &[&str] = &[
    "hello",
    "counter",
    "cpuid",
    "msr",
    "escape",
    "hvmem",
    "triple",
    "realmode",
    "spin",
    "bench",
    "pingpong",
    "halter",
    "statekeeper",
    "syscall",
    "crs",
    "cr8",
    "stihlt",
    "flood",
    "multiboot",
    "smp",
    "smpbench",
    "ipisink",
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

/// Where the host tool puts what it makes (`baremetal/`, `images/`, `run/`):
/// `$HV_TARGET_DIR` if set, else `<root>/target`. Separate directories let
/// several builds and emulator runs (e.g. the integration tests) go on at once
/// without clobbering each other.
pub fn output_dir(root: &Path) -> PathBuf {
    match std::env::var_os("HV_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join("target"),
    }
}

/// Where `build` puts the images of the project's guests as they are packed:
/// stripped of debug information, real-mode guests converted to flat binaries.
pub fn guests_dir(root: &Path) -> PathBuf {
    output_dir(root).join("baremetal").join("stripped")
}

/// The `--features` value for `HV_KERNEL_FEATURES` (kernel features,
/// comma-separated), if any is named.
fn kernel_features() -> Option<String> {
    let names = std::env::var("HV_KERNEL_FEATURES").ok()?;
    let list: Vec<String> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| format!("kernel/{n}"))
        .collect();
    (!list.is_empty()).then(|| list.join(","))
}

/// Builds the kernel and the guest programs (release profile) and returns their paths.
///
/// `HV_BUILD_STD=1` (set by `boot/toolchain.sh` when the toolchain has no
/// prebuilt `x86_64-unknown-none` library) adds `-Zbuild-std`.
pub fn build(root: &Path) -> Result<Artifacts, Error> {
    let target_dir = output_dir(root).join("baremetal");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "kernel", "-p", "guests"])
        .args(["--target", "x86_64-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    // `HV_KERNEL_FEATURES=bench-counts` (comma-separated kernel features):
    // the benchmark's counting build (tests/bench.sh gives it its own
    // `HV_TARGET_DIR`, so it never replaces the ordinary kernel).
    if let Some(features) = kernel_features() {
        cmd.arg("--features").arg(features);
    }
    if std::env::var("HV_BUILD_STD")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        cmd.args([
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
        ]);
    }
    // Frame pointers make the crash report's backtrace possible.
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        "-C force-frame-pointers=yes",
    );
    // The outer cargo's per-package variables must not leak into the inner build.
    for var in [
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(var);
    }
    eprintln!("==> building kernel and guests (x86_64-unknown-none, release)");
    let status = cmd.status().map_err(|e| Error::Tool {
        tool: "cargo".into(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        return Err(Error::Build(format!(
            "cargo build of kernel/guests failed ({status})"
        )));
    }
    let out = target_dir.join("x86_64-unknown-none").join("release");
    let kernel = out.join("kernel");
    if !kernel.is_file() {
        return Err(Error::Build(format!(
            "kernel ELF missing at {}",
            kernel.display()
        )));
    }
    // Images get copies without debug information: BIOS firmware (Bochs above
    // all) reads the disk slowly, and the full ELFs stay here for GDB.
    let stripped = guests_dir(root);
    std::fs::create_dir_all(&stripped).map_err(|e| Error::io(&stripped, e))?;
    objcopy(&kernel, &stripped.join("kernel"), &["--strip-debug"])?;
    for guest in GUEST_PROGRAMS {
        if REAL_MODE_PROGRAMS.contains(guest) {
            // Real-mode guests are flat binaries, like a boot sector.
            objcopy(
                &out.join(guest),
                &stripped.join(guest),
                &["-O", "binary", "--only-section=.text16"],
            )?;
        } else {
            objcopy(&out.join(guest), &stripped.join(guest), &["--strip-debug"])?;
        }
    }
    Ok(Artifacts {
        kernel: stripped.join("kernel"),
        guests_dir: stripped,
    })
}

/// Guest programs that are 16-bit real-mode code, packed as flat binaries
/// (loaded at 0x7c00, see `kernel/guests/realmode.ld`).
pub const REAL_MODE_PROGRAMS: &[&str] = &["realmode"];

/// `llvm-objcopy ARGS input output`, from the toolchain's sysroot (rustup's
/// llvm-tools, or the link `boot/toolchain.sh` makes to Debian's llvm-22).
fn objcopy(input: &Path, output: &Path, args: &[&str]) -> Result<(), Error> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| Error::Tool {
            tool: "rustc".into(),
            detail: e.to_string(),
        })?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let objcopy = Path::new(&sysroot).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-objcopy");
    if !objcopy.is_file() {
        return Err(Error::MissingTool {
            tool: objcopy.display().to_string(),
            package: "llvm-22 (or rustup component llvm-tools)".into(),
        });
    }
    let status = Command::new(&objcopy)
        .args(args)
        .arg(input)
        .arg(output)
        .status()
        .map_err(|e| Error::Tool {
            tool: objcopy.display().to_string(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(Error::Build(format!(
            "llvm-objcopy {} {} failed",
            args.join(" "),
            input.display()
        )));
    }
    Ok(())
}
