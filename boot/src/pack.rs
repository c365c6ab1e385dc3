//! Packs what the kernel should do into the boot package (the bootloader's
//! ramdisk): the command, boot options, the validated VM table and the guest
//! images, in the compact format of [`hvcore::package`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hvcore::package::{self, BootOptions, Command, Image, Package};

use crate::image::{self, Images};
use crate::kernel_build::{self, Artifacts};
use crate::{config, Error};

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

/// Loads and validates a VM configuration; guest names resolve to the guest
/// programs of the last build (or any path, with `file:`).
pub fn load_config(path: &Path, cpus: Option<u32>, artifacts: Option<&Artifacts>) -> Result<config::LoadedConfig, Error> {
    let guests_dir = artifacts.map(|a| a.guests_dir.clone());
    let resolver = move |name: &str| -> Result<PathBuf, String> {
        if !kernel_build::GUEST_PROGRAMS.contains(&name) {
            return Err(format!(
                "no guest program named `{name}` (built-in guests: {}; or use file:PATH)",
                kernel_build::GUEST_PROGRAMS.join(", ")
            ));
        }
        match &guests_dir {
            Some(dir) => Ok(dir.join(name)),
            // Only validating: the program exists by name; its size is checked at pack time.
            None => Ok(kernel_build::output_dir(&kernel_build::repo_root())
                .join("baremetal/x86_64-unknown-none/release")
                .join(name)),
        }
    };
    config::load(path, cpus, &resolver).map_err(|e| Error::Config(e.to_string()))
}

/// Builds the boot package bytes for a scenario.
pub fn package_bytes(scenario: &Scenario, artifacts: &Artifacts) -> Result<Vec<u8>, Error> {
    let (vms, files) = match &scenario.config {
        Some(path) => {
            let loaded = load_config(path, None, Some(artifacts))?;
            (loaded.vms, loaded.images)
        }
        None => (Vec::new(), Vec::new()),
    };
    let images = files.iter().map(|f| Image { name: &f.name, kind: f.kind, data: &f.data }).collect();
    let pkg = Package { command: scenario.command.clone(), options: scenario.options, vms, images };
    package::encode(&pkg).map_err(|e| Error::Config(format!("cannot encode the boot package: {e:?}")))
}

/// The bare-metal build is done once per process (tests share it).
static BUILT: Mutex<Option<Artifacts>> = Mutex::new(None);

/// Builds the kernel and guests (once per process), packs the scenario and
/// writes `target/images/<stem>-{uefi,bios}.img` (`target` is
/// [`kernel_build::output_dir`]).
pub fn prepare(scenario: &Scenario, stem: &str) -> Result<Images, Error> {
    let artifacts = {
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        match built.as_ref() {
            Some(a) => a.clone(),
            None => {
                let a = kernel_build::build(&kernel_build::repo_root())?;
                *built = Some(a.clone());
                a
            }
        }
    };
    let bytes = package_bytes(scenario, &artifacts)?;
    let out = kernel_build::output_dir(&kernel_build::repo_root()).join("images");
    image::build_images(&artifacts.kernel, &bytes, &out, stem)
}
