//! Links every guest program at its fixed guest-physical load address.
//!
//! Guests are static executables (`--no-pie`): the hypervisor copies their
//! PT_LOAD segments to the guest-physical addresses they name and starts at the
//! ELF entry point, without applying relocations. `realmode` and `multiboot`
//! have scripts of their own (16-bit code at 0x7c00; a Multiboot kernel whose
//! file is laid out as its memory, for the a.out kludge).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for entry in std::fs::read_dir(format!("{dir}/src/bin")).expect("src/bin exists") {
        let path = entry.expect("readable src/bin").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_owned();
        let script = match name.as_str() {
            "realmode" => "realmode.ld",
            "multiboot" => "multiboot.ld",
            _ => "guest.ld",
        };
        println!("cargo:rustc-link-arg-bin={name}=-T{dir}/{script}");
        println!("cargo:rustc-link-arg-bin={name}=--no-pie");
    }
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=realmode.ld");
    println!("cargo:rerun-if-changed=multiboot.ld");
    println!("cargo:rerun-if-changed=src/bin");
}
