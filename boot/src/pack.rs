//! Packs what the kernel should do into the boot package (the bootloader's
//! ramdisk): the command, boot options, the validated VM table and the guest
//! images, in the compact format of [`hvcore::package`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hvcore::package::{self, BootOptions, Command, Image, Package};

use crate::config::{self, MachineHint};
use crate::image::{self, Images};
use crate::kernel_build::{self, Artifacts};
use crate::Error;

/// What one boot should do.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The kernel's command.
    pub command: Command,
    /// Boot options.
    pub options: BootOptions,
    /// VM configuration file (TOML), if VMs are to run.
    pub config: Option<PathBuf>,
}

/// Resolves the name of a project guest to the image `build` packs for it (the
/// stripped, and for real-mode guests converted, copy in
/// [`kernel_build::guests_dir`]), or says what to do when it is not built.
pub fn project_guest(name: &str) -> Result<PathBuf, String> {
    if !kernel_build::GUEST_PROGRAMS.contains(&name) {
        return Err(format!(
            "no guest program named `{}` (built-in guests: {}; or use file:PATH)",
            hvcore::text::Escaped(name),
            kernel_build::GUEST_PROGRAMS.join(", ")
        ));
    }
    let path = kernel_build::guests_dir(&kernel_build::repo_root()).join(name);
    if !path.exists() {
        return Err(format!(
            "guest `{name}` is not built yet (no {}): build first with `cargo run -p boot -- build` (or ./qemu-run.sh)",
            config::shown(&path)
        ));
    }
    Ok(path)
}

/// The one validation path of `check-config`, `build` and `run`: reads the
/// configuration and every image exactly as they will be packed, and checks
/// them with the kernel's rules and loader against what is known of the
/// machine.
pub fn load_config(path: &Path, machine: &MachineHint) -> Result<config::LoadedConfig, Error> {
    config::load(path, machine, &project_guest).map_err(|e| Error::Config(e.to_string()))
}

/// Builds the boot package bytes for a scenario, checked for `machine`. The
/// project guests must have been built ([`kernel_build::build`]).
pub fn package_bytes(scenario: &Scenario, machine: &MachineHint) -> Result<Vec<u8>, Error> {
    let loaded = match &scenario.config {
        Some(path) => Some(load_config(path, machine)?),
        None => None,
    };
    let pkg = match &loaded {
        Some(l) => l.package(scenario.command.clone(), scenario.options),
        None => Package {
            command: scenario.command.clone(),
            options: scenario.options,
            vms: Vec::new(),
            images: Vec::<Image<'_>>::new(),
        },
    };
    package::encode(&pkg).map_err(|e| Error::Config(format!("cannot encode the boot package: {e}")))
}

/// The bare-metal build is done once per process (tests share it).
static BUILT: Mutex<Option<Artifacts>> = Mutex::new(None);

/// Builds the kernel and guests (once per process).
pub fn build_once() -> Result<Artifacts, Error> {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    match built.as_ref() {
        Some(a) => Ok(a.clone()),
        None => {
            let a = kernel_build::build(&kernel_build::repo_root())?;
            *built = Some(a.clone());
            Ok(a)
        }
    }
}

/// Builds the kernel and guests (once per process), packs the scenario and
/// writes `target/images/<stem>-{uefi,bios}.img` (`target` is
/// [`kernel_build::output_dir`]), checking the configuration only against
/// machine-independent rules.
pub fn prepare(scenario: &Scenario, stem: &str) -> Result<Images, Error> {
    prepare_for(scenario, stem, &MachineHint::NONE)
}

/// [`prepare`] for a known machine: the configuration is also checked against
/// its CPU count and memory. The package and both images are replaced
/// together, or not at all.
pub fn prepare_for(
    scenario: &Scenario,
    stem: &str,
    machine: &MachineHint,
) -> Result<Images, Error> {
    let artifacts = build_once()?;
    let bytes = package_bytes(scenario, machine)?;
    let out = kernel_build::output_dir(&kernel_build::repo_root()).join("images");
    image::build_images(&artifacts.kernel, &bytes, &out, stem)
}
