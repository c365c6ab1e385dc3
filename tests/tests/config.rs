//! Bad VM configurations and command lines are refused on the host, early,
//! with a message that names the VM and the field (or the option): through the
//! library (`boot::pack::load_config`, the one validation path of
//! `boot check-config`, `build` and `run`) and through the real CLI. No
//! emulator involved.

#![forbid(unsafe_code)]
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::time::{Duration, Instant};

use boot::config::MachineHint;
use hv_tests::*;

/// A flat guest image next to the configuration (`image = "file:guest.bin"`),
/// above the range a 64-bit guest's boot structures take.
const VM: &str = r#"
image = "file:guest.bin"
load_addr = 0x8000
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
    let machine = cpus.map(MachineHint::cpus).unwrap_or_default();
    match boot::pack::load_config(&path, &machine) {
        Ok(loaded) => panic!(
            "[{name}] {} was accepted ({} VMs):\n{toml}",
            path.display(),
            loaded.vms.len()
        ),
        Err(e) => {
            let text = e.to_string();
            eprintln!("==> [{name}] refused as expected:\n{text}");
            text
        }
    }
}

fn assert_names(name: &str, text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "[{name}] the error does not mention {needle:?}:\n{text}"
        );
    }
}

fn vm(name: &str, memory: &str, cpus: &str, extra: &str) -> String {
    format!("[[vm]]\nname = \"{name}\"\nmemory = \"{memory}\"\ncpus = {cpus}\n{VM}{extra}\n")
}

#[test]
fn good_config_is_accepted() {
    let toml = vm("alpha", "16M", "[0]", "host_base = 0x4000000")
        + &vm("beta", "16M", "[0, 1]", "slice_ms = 5");
    let path = write_config("good_config_is_accepted", &toml);
    let loaded = boot::pack::load_config(&path, &MachineHint::cpus(2))
        .unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(loaded.vms.len(), 2);
    assert_eq!(loaded.images.len(), 1, "both VMs share one image file");
}

#[test]
fn bad_config_overlapping_host_base() {
    let toml = vm("alpha", "16M", "[0]", "host_base = 0x4000000")
        + &vm("beta", "16M", "[0]", "host_base = 0x4800000");
    let text = refused("bad_config_overlapping_host_base", &toml, None);
    assert_names(
        "overlap",
        &text,
        &["vm \"beta\"", "host_base", "overlaps vm \"alpha\""],
    );
}

#[test]
fn bad_config_oversized_memory() {
    // An image bigger than the VM's memory: refused on the host.
    let name = "bad_config_oversized_image";
    let toml = "[[vm]]\nname = \"tiny\"\nmemory = \"2M\"\ncpus = [0]\nimage = \"file:big.bin\"\nload_addr = 0x8000\n";
    let path = config_file(name, toml);
    std::fs::write(work_dir(name).join("big.bin"), vec![0x90u8; 3 << 20]).expect("write big.bin");
    let text = match boot::pack::load_config(&path, &MachineHint::NONE) {
        Ok(_) => panic!("[{name}] a 3 MiB image in a 2 MiB VM was accepted"),
        Err(e) => e.to_string(),
    };
    assert_names(
        name,
        &text,
        &[
            "vm \"tiny\"",
            "image",
            "it holds 3 MiB, more than the VM's 2 MiB of memory",
        ],
    );
    // Bigger than the machine: refused by the rules the kernel applies with
    // the real machine's memory (the same hvcore code).
    let path = write_config(
        "bad_config_oversized_memory_machine",
        &vm("big", "128M", "[0]", ""),
    );
    let loaded =
        boot::pack::load_config(&path, &MachineHint::NONE).expect("valid without machine limits");
    let images = loaded.image_infos();
    let limits = hvcore::config::MachineLimits {
        cpu_count: Some(1),
        memory: Some(hvcore::config::MemoryLimits {
            usable_bytes: 64 << 20,
            usable_ranges: Vec::new(),
        }),
    };
    let errors = hvcore::config::validate(&loaded.vms, &images, &limits)
        .expect_err("128 MiB VM on a 64 MiB machine");
    let text = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_names(
        "oversized",
        &text,
        &[
            "vm \"big\"",
            "memory",
            "128 MiB is more than the machine's 64 MiB",
        ],
    );
}

#[test]
fn bad_config_memory_not_2mib_multiple() {
    let text = refused(
        "bad_config_memory_not_2mib_multiple",
        &vm("odd", "3M", "[0]", ""),
        None,
    );
    assert_names(
        "memory",
        &text,
        &["vm \"odd\"", "memory", "not a multiple of 2 MiB"],
    );
}

#[test]
fn bad_config_missing_cpu() {
    let text = refused(
        "bad_config_missing_cpu",
        &vm("alpha", "16M", "[0, 3]", ""),
        Some(2),
    );
    assert_names(
        "cpu",
        &text,
        &[
            "vm \"alpha\"",
            "cpus",
            "CPU 3 does not exist (machine has 2)",
        ],
    );
}

#[test]
fn bad_config_missing_image() {
    let toml = "[[vm]]\nname = \"ghost\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"file:nope.bin\"\nload_addr = 0x8000\n";
    let text = refused("bad_config_missing_image", toml, None);
    assert_names("image", &text, &["vm \"ghost\"", "image", "nope.bin"]);
    let toml =
        "[[vm]]\nname = \"ghost\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"no-such-guest\"\n";
    let text = refused("bad_config_unknown_guest", toml, None);
    assert_names(
        "image",
        &text,
        &[
            "vm \"ghost\"",
            "image",
            "no guest program named `no-such-guest`",
        ],
    );
}

#[test]
fn bad_config_duplicate_names() {
    let toml = vm("twin", "16M", "[0]", "") + &vm("twin", "16M", "[0]", "");
    let text = refused("bad_config_duplicate_names", &toml, None);
    assert_names(
        "duplicate",
        &text,
        &["vm \"twin\"", "name", "already used by vm #1"],
    );
}

#[test]
fn bad_config_vm_without_cpu() {
    let text = refused(
        "bad_config_vm_without_cpu",
        &vm("idle", "16M", "[]", ""),
        None,
    );
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
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test binary sits in <target>/debug/deps")
}

/// The `boot` binary of this checkout, (re)built in the target folder of the
/// cargo running these tests (it has released its lock once the tests run).
fn boot_exe(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(exe) = built.as_ref() {
        return exe.clone();
    }
    let target = cargo_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Process::new(&cargo)
        .current_dir(boot::kernel_build::repo_root())
        .args(["build", "-q", "-p", "boot", "--bin", "boot", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap_or_else(|e| panic!("[{name}] cannot run {cargo}: {e}"));
    assert!(
        status.success(),
        "[{name}] cargo build -p boot failed: {status}"
    );
    let exe = target.join("debug").join("boot");
    *built = Some(exe.clone());
    exe
}

/// Runs `boot ARGS` (with `env` added) and returns its output; kills it and
/// fails if it takes longer than `limit` (a read that blocks, a build that
/// should not have started).
fn boot_cli(name: &str, args: &[&str], env: &[(&str, &Path)], limit: Duration) -> Output {
    let exe = boot_exe(name);
    let mut cmd = Process::new(&exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("[{name}] cannot run {}: {e}", exe.display()));
    let start = Instant::now();
    while child.try_wait().expect("wait for boot").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "[{name}] `boot {}` still ran after {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("boot output");
    eprintln!(
        "==> [{name}] boot {} exited with {} after {:.1} s:\n{}",
        args.join(" "),
        out.status,
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `boot ARGS` fails at once with exit status 2 and a message containing every needle.
fn assert_cli_refuses(name: &str, args: &[&str], needles: &[&str]) {
    let out = boot_cli(name, args, &[], Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = args.join(" ");
    assert_eq!(
        out.status.code(),
        Some(2),
        "[{name}] `boot {line}`: expected exit status 2; stderr:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "[{name}] `boot {line}`: stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

/// The real command line: `boot check-config FILE --cpus 2` exits non-zero and
/// prints the problem.
#[test]
fn check_config_cli_refuses_bad_file() {
    let name = "check_config_cli_refuses_bad_file";
    let path = write_config(
        name,
        &(vm("alpha", "16M", "[0, 5]", "") + &vm("alpha", "16M", "[]", "")),
    );
    let path = path.to_string_lossy().into_owned();
    let out = boot_cli(
        name,
        &["check-config", &path, "--cpus", "2"],
        &[],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "[{name}] expected exit status 2; stderr:\n{stderr}"
    );
    for needle in [
        "invalid VM configuration",
        "vm \"alpha\": cpus: CPU 5 does not exist (machine has 2)",
        "name: already used by vm #1",
        "cpus: no CPU given",
    ] {
        assert!(
            stderr.contains(needle),
            "[{name}] stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

/// Numbers on the command line are parsed into their range, and every option
/// is checked before anything is built: each of these fails within seconds,
/// without a build, with exit status 2 and the option named.
#[test]
fn cli_options_are_checked_before_building() {
    let name = "cli_options_are_checked_before_building";
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--stop-after", "4294967296"],
            "--stop-after: 4294967296 is out of range: give 1 to 4294967295 (milliseconds)",
        ),
        (
            &["run", "--mem", "4294967808"],
            "--mem: 4294967808 is out of range: give 64 to 65536 (MiB)",
        ),
        (
            &["run", "--smp", "4294967298"],
            "--smp: 4294967298 is out of range: give 1 to 256 (CPUs)",
        ),
        (
            &["run", "--smp", "-1"],
            "--smp: `-1` is not a whole number: give 1 to 256 (CPUs)",
        ),
        (&["run", "--mem"], "--mem needs a value: 64 to 65536 (MiB)"),
        (
            &["run", "--frobnicate"],
            "unexpected argument `--frobnicate`",
        ),
        (&["run", "--bochs", "--gdb"], "--gdb works with QEMU only"),
        (&["build", "--smp", "0"], "--smp: 0 is out of range"),
        (
            &["check-config", "x.toml", "--cpus", "4294967296"],
            "--cpus: 4294967296 is out of range: give 1 to 256 (CPUs)",
        ),
    ];
    for (args, needle) in cases {
        assert_cli_refuses(name, args, &[needle]);
    }
}

/// Configuration and image files that are not regular files are refused by
/// name at once: `/dev/zero` is not read until memory runs out, a FIFO does
/// not block.
#[test]
fn special_files_are_refused_at_once() {
    let name = "special_files_are_refused_at_once";
    let dir = work_dir(name);
    let fifo = dir.join("fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Process::new("mkfifo").arg(&fifo).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "[{name}] mkfifo (coreutils) is needed"
    );
    let fifo_s = fifo.to_string_lossy().into_owned();
    let dir_s = dir.to_string_lossy().into_owned();
    assert_cli_refuses(
        name,
        &["check-config", "/dev/zero"],
        &["cannot read /dev/zero: a character device, not a regular file"],
    );
    assert_cli_refuses(
        name,
        &["check-config", &fifo_s],
        &["a FIFO (named pipe), not a regular file"],
    );
    assert_cli_refuses(
        name,
        &["check-config", &dir_s],
        &["a directory, not a regular file"],
    );
    // The same for images.
    let toml = "[[vm]]\nname = \"z\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"file:/dev/zero\"\nload_addr = 0x8000\n\n\
                [[vm]]\nname = \"p\"\nmemory = \"16M\"\ncpus = [0]\nimage = \"file:fifo\"\nload_addr = 0x8000\n";
    let path = config_file(name, toml).to_string_lossy().into_owned();
    assert_cli_refuses(
        name,
        &["check-config", &path],
        &[
            "vm \"z\": image: cannot read /dev/zero: a character device, not a regular file",
            "vm \"p\": image: cannot read",
            "fifo: a FIFO (named pipe), not a regular file",
        ],
    );
    // `flash --image` names what the path is.
    assert_cli_refuses(
        name,
        &["flash", "/dev/null", "--image", &dir_s, "--dry-run"],
        &["is a directory, not a disk image file"],
    );
}

/// `check-config` applies the machine limits it is given, as `run` does with
/// its --smp and --mem: one validation path.
#[test]
fn check_config_applies_machine_limits() {
    let name = "check_config_applies_machine_limits";
    let toml = vm("big", "512M", "[0]", "") + &vm("two", "16M", "[1]", "");
    let path = write_config(name, &toml).to_string_lossy().into_owned();
    let out = boot_cli(name, &["check-config", &path], &[], Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(0),
        "[{name}] valid for an unknown machine"
    );
    assert_cli_refuses(
        name,
        &["check-config", &path, "--cpus", "1", "--mem", "512"],
        &[
            "vm \"big\": memory: 512 MiB is more than the machine's 446 MiB of usable memory",
            "vm \"two\": cpus: CPU 1 does not exist (machine has 1)",
            "checked against 1 CPU(s) (--cpus 1) and a machine of 512 MiB (--mem 512)",
        ],
    );
}

/// In a checkout where nothing is built, `check-config` says to build first
/// instead of failing to read a guest.
#[test]
fn check_config_says_to_build_first() {
    let name = "check_config_says_to_build_first";
    let empty = work_dir(name).join("empty-target");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty).expect("mkdir");
    let default = boot::kernel_build::repo_root().join("boot/configs/default.toml");
    let default = default.to_string_lossy().into_owned();
    let out = boot_cli(
        name,
        &["check-config", &default],
        &[("HV_TARGET_DIR", &empty)],
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("vm \"alpha\": image: \"counter\": guest `counter` is not built yet")
            && stderr.contains("build first with `cargo run -p boot -- build`"),
        "[{name}] {stderr}"
    );
}

/// `check-config` judges the project's guests as `build` packs them: the
/// real-mode guest (a flat binary cut from its ELF) is accepted, and the
/// 64-bit guests' ELF images pass the loader's checks. Builds the guests.
#[test]
fn check_config_accepts_the_project_guests_as_packed() {
    let name = "check_config_accepts_the_project_guests_as_packed";
    boot::pack::build_once().unwrap_or_else(|e| panic!("[{name}] build: {e}"));
    let tables: Vec<String> = boot::kernel_build::GUEST_PROGRAMS
        .iter()
        .map(|guest| {
            if boot::kernel_build::REAL_MODE_PROGRAMS.contains(guest) {
                format!("[[vm]]\nname = \"{guest}\"\nmemory = \"2M\"\ncpus = [0]\nimage = \"{guest}\"\nload_addr = 0x7c00\nmode = \"real16\"\n")
            } else {
                format!("[[vm]]\nname = \"{guest}\"\nmemory = \"4M\"\ncpus = [0]\nimage = \"{guest}\"\n")
            }
        })
        .collect();
    // More guests than one configuration may hold: check them in groups.
    for (i, group) in tables.chunks(hvcore::config::MAX_VMS).enumerate() {
        let path = config_file(&format!("{name}-{i}"), &group.join("\n"));
        let loaded = boot::pack::load_config(&path, &MachineHint::NONE)
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        assert_eq!(loaded.vms.len(), group.len());
        let out = boot_cli(
            name,
            &["check-config", &path.to_string_lossy()],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "[{name}] {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Kernels through the real command line: a Linux VM with an initrd and a
/// Multiboot VM pass `boot check-config` (which says what each VM boots);
/// kernel keys on an image, image keys on a kernel, a command line longer
/// than the kernel takes and a kernel that does not fit its VM are refused
/// with exit status 2, each naming the VM and the key.
#[test]
fn check_config_cli_kernels() {
    let name = "check_config_cli_kernels";
    let dir = work_dir(name);
    // Debian's cloud kernel's header: init_size 51.5 MiB from 16 MiB.
    std::fs::write(
        dir.join("vmlinuz"),
        hvcore::image::minimal_bzimage(0x1000, 0x338_0000),
    )
    .expect("write vmlinuz");
    std::fs::write(
        dir.join("mboot"),
        hvcore::image::minimal_multiboot(0x10_0000, 0x1000),
    )
    .expect("write mboot");
    std::fs::write(dir.join("initrd.gz"), vec![0x1fu8; 100_000]).expect("write initrd.gz");
    let linux = |vm: &str, memory: &str, extra: &str| {
        format!(
            "[[vm]]\nname = \"{vm}\"\nmemory = \"{memory}\"\ncpus = [1]\nkernel = \"file:vmlinuz\"\n{extra}\n"
        )
    };
    let good = linux(
        "linux",
        "256M",
        "initrd = \"file:initrd.gz\"\ncmdline = \"console=ttyS0 acpi=off pci=off reboot=t\"",
    ) + &linux("mb", "16M", "cmdline = \"debug\"\non_reboot = \"stop\"")
        .replace("file:vmlinuz", "file:mboot")
        + &vm("alpha", "16M", "[0]", "");
    let path = write_config(name, &good);
    let path = path.to_string_lossy().into_owned();
    let out = boot_cli(
        name,
        &["check-config", &path, "--cpus", "2", "--mem", "512"],
        &[],
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "[{name}] refused:\n{stdout}");
    for needle in [
        "OK, 3 VM(s)",
        "linux: 256 MiB, CPUs [1], slice 10000 us, kernel file:vmlinuz (linux), initrd file:initrd.gz, on reboot restart",
        "mb: 16 MiB, CPUs [1], slice 10000 us, kernel file:mboot (protected32), on reboot stop",
        "alpha: 16 MiB, CPUs [0], slice 10000 us, image file:guest.bin (long64), on reboot stop",
    ] {
        assert!(stdout.contains(needle), "[{name}] stdout lacks {needle:?}:\n{stdout}");
    }

    let bad = linux("k", "256M", "mode = \"long64\"\nload_addr = 0x100000")
        + &vm(
            "i",
            "16M",
            "[0]",
            "initrd = \"file:initrd.gz\"\ncmdline = \"quiet\"",
        )
        + &linux("c", "256M", &format!("cmdline = \"{}\"", "a".repeat(2048)))
        + &linux("s", "64M", "")
        + &linux("b", "64M", "image = \"file:guest.bin\"");
    let path = write_config(name, &bad);
    let path = path.to_string_lossy().into_owned();
    assert_cli_refuses(
        name,
        &["check-config", &path],
        &[
            "vm \"k\": mode: a kernel's mode follows from its format",
            "vm \"k\": load_addr: a kernel loads where its boot protocol says (remove load_addr)",
            "vm \"i\": initrd: only a Linux kernel (`kernel = ...`) takes an initrd, not an image",
            "vm \"i\": cmdline: only a kernel (`kernel = ...`) takes a command line, not an image",
            "vm \"c\": cmdline: the command line has 2048 bytes, the kernel accepts at most 2047",
            "vm \"s\": kernel: \"file:vmlinuz\": the kernel needs 0x1000000..0x4380000 (52 MiB \
             from its load address, init_size included) but the VM has 64 MiB of memory",
            "vm \"b\": kernel: give image or kernel, not both",
        ],
    );
}
