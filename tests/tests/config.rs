//! Bad VM configurations are refused on the host with a message that names the
//! VM and the field: through the library (`boot::pack::load_config`, what
//! `boot check-config` and image builds use) and once through the real CLI.
//! No emulator involved.

#![forbid(unsafe_code)]
use std::path::{Path, PathBuf};

use hv_tests::*;

/// A flat guest image next to the configuration (`image = "file:guest.bin"`).
const VM: &str = r#"
image = "file:guest.bin"
load_addr = 0x1000
"#;

/// Writes `toml` (with `guest.bin` beside it) and returns the config path.
fn write_config(name: &str, toml: &str) -> PathBuf {
    let path = config_file(name, toml);
    std::fs::write(work_dir(name).join("guest.bin"), [0xf4u8; 64]).expect("write guest.bin");
    path
}

/// Loads `toml` with an optional `--cpus` hint; returns the error text, failing
/// the test if the configuration was accepted.
fn refused(name: &str, toml: &str, cpus: Option<u32>) -> String {
    let path = write_config(name, toml);
    match boot::pack::load_config(&path, cpus, None) {
        Ok(loaded) => panic!("[{name}] {} was accepted ({} VMs):\n{toml}", path.display(), loaded.vms.len()),
        Err(e) => {
            let text = e.to_string();
            eprintln!("==> [{name}] refused as expected:\n{text}");
            text
        }
    }
}

fn assert_names(name: &str, text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "[{name}] the error does not mention {needle:?}:\n{text}");
    }
}

fn vm(name: &str, memory: &str, cpus: &str, extra: &str) -> String {
    format!("[[vm]]\nname = \"{name}\"\nmemory = \"{memory}\"\ncpus = {cpus}\n{VM}{extra}\n")
}

#[test]
fn good_config_is_accepted() {
    let toml = vm("alpha", "16M", "[0]", "host_base = 0x4000000") + &vm("beta", "16M", "[0, 1]", "slice_ms = 5");
    let path = write_config("good_config_is_accepted", &toml);
    let loaded = boot::pack::load_config(&path, Some(2), None).unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(loaded.vms.len(), 2);
    assert_eq!(loaded.images.len(), 1, "both VMs share one image file");
}

#[test]
fn bad_config_overlapping_host_base() {
    let toml = vm("alpha", "16M", "[0]", "host_base = 0x4000000") + &vm("beta", "16M", "[0]", "host_base = 0x4800000");
    let text = refused("bad_config_overlapping_host_base", &toml, None);
    assert_names("overlap", &text, &["vm \"beta\"", "host_base", "overlaps vm \"alpha\""]);
}

#[test]
fn bad_config_oversized_memory() {
    // An image bigger than the VM's memory: refused on the host.
    let name = "bad_config_oversized_image";
    let toml = "[[vm]]\nname = \"tiny\"\nmemory = \"2M\"\ncpus = [0]\nimage = \"file:big.bin\"\nload_addr = 0x1000\n";
    let path = config_file(name, toml);
    std::fs::write(work_dir(name).join("big.bin"), vec![0x90u8; 3 << 20]).expect("write big.bin");
    let text = match boot::pack::load_config(&path, None, None) {
        Ok(_) => panic!("[{name}] a 3 MiB image in a 2 MiB VM was accepted"),
        Err(e) => e.to_string(),
    };
    assert_names(name, &text, &["vm \"tiny\"", "image", "larger than the VM's 2 MiB of memory"]);
    // Bigger than the machine: refused by the rules the kernel applies with
    // the real machine's memory (the same hvcore code).
    let path = write_config("bad_config_oversized_memory_machine", &vm("big", "128M", "[0]", ""));
    let loaded = boot::pack::load_config(&path, None, None).expect("valid without machine limits");
    let images: Vec<hvcore::config::ImageInfo<'_>> = loaded
        .images
        .iter()
        .map(|i| hvcore::config::ImageInfo { name: &i.name, len: i.data.len() as u64, kind: i.kind })
        .collect();
    let limits = hvcore::config::MachineLimits {
        cpu_count: Some(1),
        memory: Some(hvcore::config::MemoryLimits { usable_bytes: 64 << 20, usable_ranges: Vec::new() }),
    };
    let errors = hvcore::config::validate(&loaded.vms, &images, &limits).expect_err("128 MiB VM on a 64 MiB machine");
    let text = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert_names("oversized", &text, &["vm \"big\"", "memory", "128 MiB is more than the machine's 64 MiB"]);
}

#[test]
fn bad_config_memory_not_2mib_multiple() {
    let text = refused("bad_config_memory_not_2mib_multiple", &vm("odd", "3M", "[0]", ""), None);
    assert_names("memory", &text, &["vm \"odd\"", "memory", "not a multiple of 2 MiB"]);
}

#[test]
fn bad_config_missing_cpu() {
    let text = refused("bad_config_missing_cpu", &vm("alpha", "16M", "[0, 3]", ""), Some(2));
    assert_names("cpu", &text, &["vm \"alpha\"", "cpus", "CPU 3 does not exist (machine has 2)"]);
}

#[test]
fn bad_config_missing_image() {
    let toml = "[[vm]]\nname = \"ghost\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"file:nope.bin\"\nload_addr = 0x1000\n";
    let text = refused("bad_config_missing_image", toml, None);
    assert_names("image", &text, &["vm \"ghost\"", "image", "nope.bin"]);
    let toml = "[[vm]]\nname = \"ghost\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"no-such-guest\"\n";
    let text = refused("bad_config_unknown_guest", toml, None);
    assert_names("image", &text, &["vm \"ghost\"", "image", "no guest program named `no-such-guest`"]);
}

#[test]
fn bad_config_duplicate_names() {
    let toml = vm("twin", "16M", "[0]", "") + &vm("twin", "16M", "[0]", "");
    let text = refused("bad_config_duplicate_names", &toml, None);
    assert_names("duplicate", &text, &["vm \"twin\"", "name", "already used by vm #1"]);
}

#[test]
fn bad_config_vm_without_cpu() {
    let text = refused("bad_config_vm_without_cpu", &vm("idle", "16M", "[]", ""), None);
    assert_names("no cpu", &text, &["vm \"idle\"", "cpus", "no CPU given"]);
}

#[test]
fn bad_config_unknown_key() {
    let toml = vm("alpha", "16M", "[0]", "colour = \"red\"");
    let text = refused("bad_config_unknown_key", &toml, None);
    // The parser names the key and its line (the VM's table is around it).
    assert_names("unknown key", &text, &["colour", "line 8"]);
}

#[test]
fn bad_config_no_vm() {
    let text = refused("bad_config_no_vm", "# nothing here\n", None);
    assert_names("no vm", &text, &["no VM is configured"]);
}

/// The target folder of the cargo running these tests (`<dir>/debug/deps/<test>`).
fn cargo_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).map(Path::to_path_buf).expect("test binary sits in <target>/debug/deps")
}

/// The real command line: `boot check-config FILE --cpus 2` exits non-zero and
/// prints the problem. The `boot` binary is (re)built in the same target folder
/// (cargo has released its lock once the tests run).
#[test]
fn check_config_cli_refuses_bad_file() {
    let name = "check_config_cli_refuses_bad_file";
    let path = write_config(name, &(vm("alpha", "16M", "[0, 5]", "") + &vm("alpha", "16M", "[]", "")));
    let target = cargo_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .current_dir(boot::kernel_build::repo_root())
        .args(["build", "-q", "-p", "boot", "--bin", "boot", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap_or_else(|e| panic!("[{name}] cannot run {cargo}: {e}"));
    assert!(status.success(), "[{name}] cargo build -p boot failed: {status}");
    let exe = target.join("debug").join("boot");
    let out = std::process::Command::new(&exe)
        .arg("check-config")
        .arg(&path)
        .args(["--cpus", "2"])
        .output()
        .unwrap_or_else(|e| panic!("[{name}] cannot run {}: {e}", exe.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("==> [{name}] {} check-config exited with {}:\n{stderr}", exe.display(), out.status);
    assert_eq!(out.status.code(), Some(2), "[{name}] expected exit status 2; stderr:\n{stderr}");
    for needle in ["invalid VM configuration", "vm \"alpha\": cpus: CPU 5 does not exist (machine has 2)", "name: already used by vm #1", "cpus: no CPU given"] {
        assert!(stderr.contains(needle), "[{name}] stderr lacks {needle:?}:\n{stderr}");
    }
}
