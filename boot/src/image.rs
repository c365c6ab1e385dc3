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
///
/// The three files are made in a staging folder inside `out_dir` and moved
/// into place only once all three exist: if one fails, the package and images
/// of the last good build stay as they were, and nothing half-made is left.
pub fn build_images(
    kernel: &Path,
    ramdisk: &[u8],
    out_dir: &Path,
    stem: &str,
) -> Result<Images, Error> {
    if ramdisk.is_empty() {
        // The bootloader waits forever for a zero-byte ramdisk.
        return Err(Error::Image(
            "refusing an empty boot package (the bootloader hangs on a zero-byte ramdisk)".into(),
        ));
    }
    let images = Images {
        uefi: out_dir.join(format!("{stem}-uefi.img")),
        bios: out_dir.join(format!("{stem}-bios.img")),
    };
    let package = out_dir.join(format!("{stem}.hvpkg"));
    let mut staging = Staging::new(out_dir, stem)?;
    let ramdisk_path = staging.stage(&package);
    std::fs::write(&ramdisk_path, ramdisk).map_err(|e| Error::io(&ramdisk_path, e))?;
    let config = boot_config();
    let uefi = staging.stage(&images.uefi);
    UefiBoot::new(kernel)
        .set_ramdisk(&ramdisk_path)
        .set_boot_config(&config)
        .create_disk_image(&uefi)
        .map_err(|e| Error::Image(format!("UEFI image {}: {e:#}", images.uefi.display())))?;
    let bios = staging.stage(&images.bios);
    BiosBoot::new(kernel)
        .set_ramdisk(&ramdisk_path)
        .set_boot_config(&config)
        .create_disk_image(&bios)
        .map_err(|e| Error::Image(format!("BIOS image {}: {e:#}", images.bios.display())))?;
    staging.commit()?;
    Ok(images)
}

/// Output files made in a private folder next to their final place and moved
/// there together by [`Staging::commit`]; dropped uncommitted, the folder and
/// everything in it go away and the final places are untouched.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    /// (staged path, final path), in staging order.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    /// A fresh staging folder `<out_dir>/.staging-<stem>-<pid>-<n>` (same file
    /// system as the outputs, so the final moves are renames).
    pub fn new(out_dir: &Path, stem: &str) -> Result<Staging, Error> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = out_dir.join(format!(".staging-{stem}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Staging {
            dir,
            files: Vec::new(),
        })
    }

    /// Where to write the file that will become `final_path`.
    pub fn stage(&mut self, final_path: &Path) -> PathBuf {
        let name = final_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "out".into());
        let staged = self.dir.join(name);
        self.files.push((staged.clone(), final_path.to_path_buf()));
        staged
    }

    /// Moves every staged file to its final place (each a rename) and removes
    /// the staging folder. Every staged file must exist.
    pub fn commit(mut self) -> Result<(), Error> {
        for (staged, _) in &self.files {
            if !staged.is_file() {
                return Err(Error::Image(format!("{} was not made", staged.display())));
            }
        }
        for (staged, final_path) in std::mem::take(&mut self.files) {
            std::fs::rename(&staged, &final_path).map_err(|e| Error::io(&final_path, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hv-image-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Three outputs, the last of which fails: the old ones stay, nothing else appears.
    #[test]
    fn a_failed_output_leaves_the_previous_ones() {
        let dir = scratch("fail");
        let finals: Vec<PathBuf> = ["hv.hvpkg", "hv-uefi.img", "hv-bios.img"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        for f in &finals {
            std::fs::write(f, b"old").unwrap();
        }
        let attempt = || -> Result<(), Error> {
            let mut staging = Staging::new(&dir, "hv")?;
            std::fs::write(staging.stage(&finals[0]), b"new").unwrap();
            std::fs::write(staging.stage(&finals[1]), b"new").unwrap();
            let _bios = staging.stage(&finals[2]);
            Err(Error::Image("BIOS image: the bootloader said no".into()))
        };
        assert!(attempt().is_err());
        for f in &finals {
            assert_eq!(std::fs::read(f).unwrap(), b"old", "{}", f.display());
        }
        assert_eq!(
            entries(&dir),
            ["hv-bios.img", "hv-uefi.img", "hv.hvpkg"],
            "staging folder left behind"
        );
        // A commit with a file missing replaces nothing either.
        let mut staging = Staging::new(&dir, "hv").unwrap();
        std::fs::write(staging.stage(&finals[0]), b"new").unwrap();
        let _ = staging.stage(&finals[1]);
        assert!(staging.commit().is_err());
        assert_eq!(std::fs::read(&finals[0]).unwrap(), b"old");
        assert_eq!(entries(&dir).len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn committed_outputs_appear_together() {
        let dir = scratch("ok");
        let finals: Vec<PathBuf> = ["a.hvpkg", "a-uefi.img"]
            .iter()
            .map(|n| dir.join(n))
            .collect();
        let mut staging = Staging::new(&dir, "a").unwrap();
        for f in &finals {
            std::fs::write(staging.stage(f), b"new").unwrap();
            assert!(!f.exists(), "nothing appears before the commit");
        }
        staging.commit().unwrap();
        for f in &finals {
            assert_eq!(std::fs::read(f).unwrap(), b"new");
        }
        assert_eq!(entries(&dir), ["a-uefi.img", "a.hvpkg"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_boot_package_is_refused() {
        let dir = scratch("empty");
        let err = build_images(Path::new("/nonexistent/kernel"), &[], &dir, "e").unwrap_err();
        assert!(err.to_string().contains("empty boot package"), "{err}");
        assert!(entries(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
