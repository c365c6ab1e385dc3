//! Disk images: the kernel ELF plus a ramdisk (the boot package) turned into a
//! UEFI (GPT + FAT) image and a BIOS (MBR) image by the `bootloader` crate.

use std::path::{Path, PathBuf};

use bootloader::{BiosBoot, BootConfig, UefiBoot};

use crate::Error;

/// The two images built from one kernel and one ramdisk.
#[derive(Debug, Clone)]
pub struct Images {
    /// GPT disk with an EFI system partition: QEMU+OVMF and real machines.
    pub uefi: PathBuf,
    /// MBR disk with the BIOS stages: Bochs and legacy firmware.
    pub bios: PathBuf,
}

/// Which firmware path an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI (OVMF under QEMU).
    Uefi,
    /// Legacy BIOS (SeaBIOS under QEMU, Bochs' BIOS).
    Bios,
}

impl Images {
    /// The image for a firmware path.
    pub fn for_firmware(&self, fw: Firmware) -> &Path {
        match fw {
            Firmware::Uefi => &self.uefi,
            Firmware::Bios => &self.bios,
        }
    }
}

/// The bootloader's own settings: its log goes to serial only at warning level,
/// so the serial log starts with the kernel's output.
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    config.log_level = bootloader_boot_config::LevelFilter::Warn;
    config.frame_buffer_logging = false;
    config
}

/// Writes `ramdisk` next to the images and builds both images as
/// `<out_dir>/<stem>-uefi.img` and `<out_dir>/<stem>-bios.img`.
pub fn build_images(kernel: &Path, ramdisk: &[u8], out_dir: &Path, stem: &str) -> Result<Images, Error> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let ramdisk_path = out_dir.join(format!("{stem}.hvpkg"));
    std::fs::write(&ramdisk_path, ramdisk).map_err(|e| Error::io(&ramdisk_path, e))?;
    let images = Images {
        uefi: out_dir.join(format!("{stem}-uefi.img")),
        bios: out_dir.join(format!("{stem}-bios.img")),
    };
    let config = boot_config();
    UefiBoot::new(kernel)
        .set_ramdisk(&ramdisk_path)
        .set_boot_config(&config)
        .create_disk_image(&images.uefi)
        .map_err(|e| Error::Image(format!("UEFI image {}: {e:#}", images.uefi.display())))?;
    BiosBoot::new(kernel)
        .set_ramdisk(&ramdisk_path)
        .set_boot_config(&config)
        .create_disk_image(&images.bios)
        .map_err(|e| Error::Image(format!("BIOS image {}: {e:#}", images.bios.display())))?;
    Ok(images)
}
