//! Running an image in QEMU or Bochs and collecting what the kernel reported.
//!
//! The kernel ends a run by printing `HV-EXIT <code>` on serial, then writing the
//! code to QEMU's `isa-debug-exit` port (QEMU exits with `code << 1 | 1`), then
//! powering off through ACPI (which ends Bochs). The runner watches the serial log,
//! so it learns the result the same way under both emulators, and kills the
//! emulator on a timeout or once the result is in: no emulator is left running,
//! even when the caller panics (the child is killed on drop).
//!
//! The serial log mixes the kernel's lines with its guests' output, which the
//! kernel prints as `vm NAME: TEXT` ([`guest_line`]). Only kernel lines count:
//! `HV-EXIT` only at the start of a line (a guest's line starts with `vm `),
//! and the VM start report only from a kernel log line (`[ s.us] LEVEL ...`).
//! [`exit_status`] turns a run into the documented exit status of `boot run`
//! (see [`status`]).
//!
//! A run can type into the serial port ([`RunSpec::input`], [`InputStep`]):
//! the port is then a socket (QEMU: a unix socket chardev the emulator waits
//! on; Bochs: `mode=socket-server` on a local TCP port) instead of a file; the
//! runner connects, copies everything the kernel sends into the same serial
//! log, and writes each step's bytes once the log shows what the step waits
//! for. Without steps the port is a plain file, as it always was.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvcore::KernelExit;

use crate::image::Firmware;
use crate::Error;

/// OVMF firmware code and variable-store template (Debian's `ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Template for the writable UEFI variable store; each run gets its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Bochs BIOS and VGA BIOS (Debian's `bochsbios` and `vgabios`).
pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
/// VGA BIOS image for Bochs.
pub const BOCHS_VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";

/// Which emulator runs the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// qemu-system-x86_64 (KVM when nested VT-x really works, else TCG).
    Qemu,
    /// Bochs with a Skylake-X CPU model: emulates VMX with EPT.
    Bochs,
}

/// Everything needed to start one emulator run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Which emulator.
    pub emulator: Emulator,
    /// Which firmware path (Bochs supports BIOS only).
    pub firmware: Firmware,
    /// The disk image to boot.
    pub image: PathBuf,
    /// Guest RAM of the emulated machine, MiB.
    pub memory_mib: u32,
    /// Number of emulated CPUs.
    pub cpus: u32,
    /// Which CPU the emulator presents.
    pub cpu: CpuModel,
    /// Wait for GDB on localhost:1234 before the first instruction (QEMU only).
    pub gdb: bool,
    /// Show the emulator's screen (the framebuffer console).
    pub display: bool,
    /// Serial on the terminal, keyboard included (`./qemu-run.sh`; QEMU also
    /// copies it to the serial log in `work_dir`, which gives the exit status
    /// its start report); otherwise the serial log is only written to `work_dir`.
    pub interactive: bool,
    /// Wall-clock limit; the emulator is killed when it passes.
    pub timeout: Option<Duration>,
    /// Folder for the serial log, firmware variables and emulator logs.
    pub work_dir: PathBuf,
    /// Scripted serial input, for non-interactive runs (tests): each step in
    /// turn waits until the serial output since the previous step's bytes
    /// were sent contains its text, then sends its bytes. Empty: the serial
    /// port is output only (a file).
    pub input: Vec<InputStep>,
    /// The control port (COM2, issue 11): QEMU serves it as a unix socket
    /// at this path (`boot ctl --socket PATH` connects); `None`: no COM2.
    pub control: Option<PathBuf>,
}

/// One step of scripted serial input ([`RunSpec::input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputStep {
    /// Text the serial output must contain (after the previous step's send,
    /// or from the start for the first step) before `send` goes out.
    pub wait_for: String,
    /// The bytes typed, as they are (`\n` for Enter, 0x1d for Ctrl-]).
    pub send: Vec<u8>,
    /// Lines that may cut through `wait_for`: those starting with this
    /// prefix (another VM's, which the kernel prints on a line of their
    /// own while the console shows an attached VM's raw output, breaking
    /// that output's line). `Some`: `wait_for` is looked for with such
    /// lines and every line break left out ([`InputStep::across_lines_of`]).
    pub across: Option<String>,
    /// `wait_for` counts anywhere in the output, also before the previous
    /// step's send ([`InputStep::anywhere`]).
    pub anywhere: bool,
}

impl InputStep {
    /// Waits for `wait_for`, then sends `send`.
    pub fn new(wait_for: &str, send: impl AsRef<[u8]>) -> Self {
        InputStep {
            wait_for: wait_for.into(),
            send: send.as_ref().to_vec(),
            across: None,
            anywhere: false,
        }
    }

    /// Lets `wait_for` count wherever it is in the output, also before the
    /// previous step's send: for events whose order the run does not fix
    /// (two VMs on two CPUs), each awaited by a step of its own.
    pub fn anywhere(mut self) -> Self {
        self.anywhere = true;
        self
    }

    /// Lets lines starting with `prefix` cut through `wait_for` (see
    /// [`InputStep::across`]).
    pub fn across_lines_of(mut self, prefix: &str) -> Self {
        self.across = Some(prefix.into());
        self
    }
}

/// The CPU an emulator presents, and so which virtualization backend the
/// kernel finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// QEMU: KVM with the host CPU when it really runs guests with nested
    /// VT-x or AMD-V, else TCG `-cpu max` (AMD-V with nested paging, no
    /// VT-x). Bochs: Skylake-X (VT-x with EPT).
    #[default]
    Default,
    /// An Intel CPU with VT-x: Bochs Skylake-X, or QEMU with KVM and nested
    /// VT-x (TCG does not emulate VMX).
    Intel,
    /// An AMD CPU with AMD-V and nested paging: Bochs Ryzen, or QEMU `-cpu
    /// EPYC` (TCG).
    Amd,
    /// A CPU with neither VT-x nor AMD-V: QEMU `-cpu qemu64,-svm,-vmx`.
    NoVirtualization,
}

impl CpuModel {
    /// The model for a `--cpu` value.
    pub fn from_name(name: &str) -> Option<CpuModel> {
        match name {
            "intel" => Some(CpuModel::Intel),
            "amd" => Some(CpuModel::Amd),
            "none" => Some(CpuModel::NoVirtualization),
            _ => None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The kernel reported a result (`HV-EXIT` on serial, or QEMU's exit device).
    Kernel(u32),
    /// The emulator exited without a kernel result (status code, if any).
    EmulatorExited(Option<i32>),
    /// The wall-clock limit passed; the emulator was killed.
    TimedOut(Duration),
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The emulator command line, for failure messages.
    pub command: String,
    /// How it ended.
    pub ending: Ending,
    /// The whole serial log.
    pub serial: String,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Whether QEMU ran with KVM.
    pub kvm: bool,
    /// How many of [`RunSpec::input`]'s steps sent their bytes.
    pub input_sent: usize,
    /// The text the first unsent step was still waiting for, if any.
    pub input_waiting: Option<String>,
    /// QEMU's record of a triple fault that reset the machine (the host
    /// kernel's, which no serial line reports): each CPU's registers then.
    pub triple_fault: Option<String>,
}

impl Outcome {
    /// True when the kernel reported [`KernelExit::Success`].
    pub fn success(&self) -> bool {
        self.ending == Ending::Kernel(KernelExit::Success as u32)
    }

    /// What QEMU recorded of a host triple fault ([`Outcome::triple_fault`]).
    pub fn triple_fault_report(&self) -> Option<String> {
        let dump = self.triple_fault.as_ref()?;
        Some(format!(
            "QEMU logged a triple fault of the host; the CPUs then:\n{dump}"
        ))
    }

    /// The last `lines` lines of the serial log.
    pub fn serial_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.serial.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Kernel(code) => match KernelExit::from_code(*code) {
                Some(k) => write!(f, "kernel exit {code:#x} ({})", k.name()),
                None => write!(f, "kernel exit {code:#x} (unknown code)"),
            },
            Ending::EmulatorExited(Some(c)) => {
                write!(f, "emulator exited with status {c} without a kernel result")
            }
            Ending::EmulatorExited(None) => {
                write!(f, "emulator killed by a signal without a kernel result")
            }
            Ending::TimedOut(d) => write!(
                f,
                "timed out after {:.1} s (emulator killed)",
                d.as_secs_f64()
            ),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} after {:.1} s",
            self.ending,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "command: {}", self.command)?;
        if let Some(text) = &self.input_waiting {
            writeln!(
                f,
                "input: {} step(s) sent; the next still waited for {:?}",
                self.input_sent, text
            )?;
        }
        if let Some(report) = self.triple_fault_report() {
            writeln!(f, "{report}")?;
        }
        writeln!(f, "serial log (last 40 lines):")?;
        write!(f, "{}", hvcore::text::EscapedLines(&self.serial_tail(40)))
    }
}

/// Parses the kernel's `HV-EXIT <code>` line out of a serial log. Only a
/// complete line counts (the emulator may have written half of it so far), and
/// only one that starts with the marker: guest output is prefixed `vm NAME: `,
/// so a guest printing `HV-EXIT 0x10` cannot end a run.
pub fn kernel_code_in(serial: &str) -> Option<u32> {
    serial
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .find_map(|line| {
            let rest = line.strip_prefix(hvcore::EXIT_MARKER)?;
            let word = rest.split_whitespace().next()?;
            let hex = word.strip_prefix("0x")?;
            u32::from_str_radix(hex, 16).ok()
        })
}

/// A guest's output line as the kernel prints it, `vm NAME: TEXT`: the VM's
/// name and the text. `None` for the kernel's own lines, including its log
/// lines about VMs (`[ 1.000000] INFO  vm alpha: ...`) and stop reports
/// (`vm alpha (id 0) stopped: ...`).
pub fn guest_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("vm ")?;
    let (name, text) = rest.split_once(": ")?;
    let valid = !name.is_empty()
        && name.len() <= hvcore::config::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then_some((name, text.trim_end_matches('\r')))
}

/// The level and message of a kernel log line, `[SECONDS.MICROS] LEVEL MESSAGE`.
pub fn kernel_log_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let (stamp, rest) = rest.split_once("] ")?;
    let (secs, micros) = stamp.trim_start().split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || !digits(micros) {
        return None;
    }
    let (level, message) = rest.split_once(' ')?;
    matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE")
        .then(|| (level, message.trim_start().trim_end_matches('\r')))
}

/// What the kernel said about starting the configured VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStart {
    /// `started N of M VM(s): ...`.
    Started {
        /// VMs that started.
        started: u32,
        /// VMs in the configuration.
        configured: u32,
    },
    /// `no VMs started: ...` (no usable VT-x) or `no VM could be started`.
    NoneStarted,
}

/// The kernel's VM start report in `serial`, from its log lines only.
pub fn vm_start_in(serial: &str) -> Option<VmStart> {
    let mut found = None;
    for (_, message) in serial.lines().filter_map(kernel_log_line) {
        if let Some(rest) = message.strip_prefix("started ") {
            let mut words = rest.split(' ');
            let started = words.next().and_then(|w| w.parse().ok());
            let of = words.next();
            let configured = words.next().and_then(|w| w.parse().ok());
            if let (Some(started), Some("of"), Some(configured)) = (started, of, configured) {
                if words.next().is_some_and(|w| w.starts_with("VM(s)")) {
                    found = Some(VmStart::Started {
                        started,
                        configured,
                    });
                }
            }
        } else if message.starts_with("no VMs started")
            || message.starts_with("no VM could be started")
        {
            found = Some(VmStart::NoneStarted);
        }
    }
    match found {
        Some(VmStart::Started { started: 0, .. }) => Some(VmStart::NoneStarted),
        other => other,
    }
}

/// Exit statuses of `boot run` (and `./qemu-run.sh`).
pub mod status {
    /// The kernel reported success and, when VMs were configured, started all of them.
    pub const OK: u8 = 0;
    /// The host tool failed before booting: bad options, an invalid
    /// configuration, a failed build, a missing emulator.
    pub const TOOL_ERROR: u8 = 2;
    /// The kernel refused some of the configured VMs (`started N of M`, N < M)
    /// and ran the others.
    pub const VMS_REFUSED: u8 = 3;
    /// The kernel started none of the configured VMs (all refused, or no
    /// usable VT-x).
    pub const NO_VM_STARTED: u8 = 4;
    /// The wall-clock limit (`--timeout`) passed; the emulator was killed.
    pub const TIMED_OUT: u8 = 124;
    /// The emulator ended without a kernel result.
    pub const EMULATOR_DIED: u8 = 125;
    // Any other kernel result is its own code: 0x11 (17) failure, 0x12 (18)
    // panic, 0x13 (19) CPU exception, 0x14 (20) bad boot package.
}

/// The exit status of a run (see [`status`]); `runs_vms` when the boot's
/// command was to run the VMs of a configuration.
pub fn exit_status(outcome: &Outcome, runs_vms: bool) -> u8 {
    match outcome.ending {
        Ending::Kernel(code) if code == KernelExit::Success as u32 => {
            if !runs_vms {
                return status::OK;
            }
            match vm_start_in(&outcome.serial) {
                Some(VmStart::Started {
                    started,
                    configured,
                }) if started >= configured => status::OK,
                Some(VmStart::Started { .. }) => status::VMS_REFUSED,
                Some(VmStart::NoneStarted) | None => status::NO_VM_STARTED,
            }
        }
        Ending::Kernel(code) => u8::try_from(code).unwrap_or(u8::MAX),
        Ending::TimedOut(_) => status::TIMED_OUT,
        Ending::EmulatorExited(_) => status::EMULATOR_DIED,
    }
}

/// Maps QEMU's exit status to the kernel's code: `isa-debug-exit` turns a write
/// of `v` into status `(v << 1) | 1`.
pub fn kernel_code_from_qemu_status(status: i32) -> Option<u32> {
    (status >= 3 && status & 1 == 1).then_some((status >> 1) as u32)
}

/// Checks that a program is on PATH, with a message naming the Debian package.
fn require_tool(tool: &str, package: &str) -> Result<(), Error> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool {
            tool: tool.into(),
            package: package.into(),
        })
    }
}

fn require_file(path: &str, package: &str) -> Result<(), Error> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::MissingTool {
            tool: path.into(),
            package: package.into(),
        })
    }
}

/// Checks that the emulator and firmware a run needs are installed, before
/// anything is built for it.
pub fn check_tools(emulator: Emulator, firmware: Firmware) -> Result<(), Error> {
    match emulator {
        Emulator::Qemu => {
            require_tool("qemu-system-x86_64", "qemu-system-x86")?;
            if firmware == Firmware::Uefi {
                require_file(OVMF_CODE, "ovmf")?;
                require_file(OVMF_VARS, "ovmf")?;
            }
        }
        Emulator::Bochs => {
            require_tool("bochs", "bochs bochs-sdl")?;
            require_file(BOCHS_BIOS, "bochsbios")?;
            require_file(BOCHS_VGABIOS, "vgabios")?;
        }
    }
    Ok(())
}

/// The virtualization extension QEMU with KVM can pass to a guest here: the
/// host CPU exposes VMX or SVM, /dev/kvm exists, and a paused `-cpu host` VM
/// with it starts (a paravirtual KVM that cannot run ordinary guests aborts
/// at vCPU reset). `None` when KVM cannot run nested guests.
pub fn kvm_nested() -> Option<&'static str> {
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| {
        flags
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == flag))
    };
    let ext = if has("vmx") {
        "vmx"
    } else if has("svm") {
        "svm"
    } else {
        return None;
    };
    if !Path::new("/dev/kvm").exists() {
        return None;
    }
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-enable-kvm",
            "-cpu",
            &format!("host,+{ext}"),
            "-machine",
            "q35",
            "-display",
            "none",
        ])
        .args(["-nodefaults", "-S", "-m", "64"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else { return None };
    let mut guard = ChildGuard(child);
    std::thread::sleep(Duration::from_millis(1500));
    // Still running (paused) after 1.5 s means the vCPU was created and reset.
    matches!(guard.0.try_wait(), Ok(None)).then_some(ext)
}

/// True when QEMU can really run a VT-x capable guest with KVM here.
pub fn kvm_with_vmx_usable() -> bool {
    kvm_nested() == Some("vmx")
}

/// The QEMU `-cpu` arguments for `model`, and whether KVM is used.
pub fn qemu_cpu(model: CpuModel, kvm: Option<&'static str>) -> Result<(Vec<String>, bool), Error> {
    let kvm_args = |ext: &str| vec!["-enable-kvm".into(), "-cpu".into(), format!("host,+{ext}")];
    let tcg = |cpu: &str| vec!["-cpu".to_string(), cpu.to_string()];
    Ok(match (model, kvm) {
        (CpuModel::Default, Some(ext)) => (kvm_args(ext), true),
        (CpuModel::Default, None) => (tcg("max"), false),
        (CpuModel::Intel, Some("vmx")) => (kvm_args("vmx"), true),
        (CpuModel::Intel, _) => {
            return Err(Error::Usage(
                "QEMU cannot present an Intel CPU with VT-x here: TCG does not emulate VMX and KVM has no nested VT-x; use --bochs --cpu intel".into(),
            ))
        }
        (CpuModel::Amd, Some("svm")) => (kvm_args("svm"), true),
        (CpuModel::Amd, _) => (tcg("EPYC"), false),
        (CpuModel::NoVirtualization, _) => (tcg("qemu64,-svm,-vmx"), false),
    })
}

fn lock_file(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Kills the emulator when dropped, so a panicking test never leaves one behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Builds the emulator command line for a run; also returns whether KVM is used.
fn command_for(
    spec: &RunSpec,
    serial_log: &Path,
    link: Option<&Endpoint>,
) -> Result<(Command, bool), Error> {
    match spec.emulator {
        Emulator::Qemu => qemu_command(spec, serial_log, link),
        Emulator::Bochs => Ok((bochs_command(spec, serial_log, link)?, false)),
    }
}

fn qemu_command(
    spec: &RunSpec,
    serial_log: &Path,
    link: Option<&Endpoint>,
) -> Result<(Command, bool), Error> {
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-no-reboot"])
        .args(["-m", &format!("{}M", spec.memory_mib)])
        .args(["-smp", &spec.cpus.to_string()])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let kvm_ext = match spec.cpu {
        CpuModel::NoVirtualization => None,
        _ => kvm_nested(),
    };
    let (cpu_args, kvm) = qemu_cpu(spec.cpu, kvm_ext)?;
    cmd.args(cpu_args);
    if spec.firmware == Firmware::Uefi {
        require_file(OVMF_CODE, "ovmf")?;
        let vars = spec.work_dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).map_err(|e| Error::io(&vars, e))?;
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    cmd.arg("-drive")
        .arg(format!("format=raw,file={}", spec.image.display()));
    // A triple fault of the host ends the run with no word on serial (QEMU
    // exits 0 under `-no-reboot`); QEMU's reset log keeps the registers.
    cmd.args(["-d", "cpu_reset", "-D"])
        .arg(reset_log(&spec.work_dir));
    if spec.interactive {
        // `-serial mon:stdio` (the terminal, with QEMU's monitor behind
        // Ctrl-A C) that also writes the serial output to the log, where the
        // run's exit status finds the kernel's start report.
        cmd.arg("-chardev").arg(format!(
            "stdio,id=com1,mux=on,logfile={}",
            serial_log.display()
        ));
        cmd.args(["-serial", "chardev:com1", "-mon", "chardev=com1"]);
    } else if let Some(link) = link {
        // QEMU waits for the runner to connect before it starts the machine.
        let chardev = match link {
            Endpoint::Unix(path) => {
                format!("socket,id=com1,path={},server=on,wait=on", path.display())
            }
            Endpoint::Tcp(addr) => format!(
                "socket,id=com1,host={},port={},server=on,wait=on",
                addr.ip(),
                addr.port()
            ),
        };
        cmd.arg("-chardev").arg(chardev);
        cmd.args(["-serial", "chardev:com1"]);
    } else {
        cmd.arg("-serial")
            .arg(format!("file:{}", serial_log.display()));
    }
    if let Some(path) = &spec.control {
        // The second `-serial` is COM2: the control port, a unix socket
        // QEMU listens on without waiting (clients come and go).
        let _ = fs::remove_file(path);
        cmd.arg("-chardev").arg(format!(
            "socket,id=com2,path={},server=on,wait=off",
            path.display()
        ));
        cmd.args(["-serial", "chardev:com2"]);
    }
    if !spec.display {
        cmd.args(["-display", "none"]);
    }
    if spec.gdb {
        cmd.args(["-s", "-S"]);
    }
    Ok((cmd, kvm))
}

fn bochs_command(
    spec: &RunSpec,
    serial_log: &Path,
    link: Option<&Endpoint>,
) -> Result<Command, Error> {
    require_tool("bochs", "bochs bochs-sdl")?;
    require_file(BOCHS_BIOS, "bochsbios")?;
    require_file(BOCHS_VGABIOS, "vgabios")?;
    if spec.firmware != Firmware::Bios {
        return Err(Error::Usage(
            "Bochs has no UEFI firmware here: use the BIOS image".into(),
        ));
    }
    if spec.gdb {
        return Err(Error::Usage(
            "--gdb works with QEMU only (Debian's Bochs has no gdbstub)".into(),
        ));
    }
    // Bochs locks the disk image with `<image>.lock` and leaves it behind when
    // killed; a stale lock makes the next run fail ("Sector Size of 0"). The
    // images are ours and used by one run at a time, so the lock is dropped.
    let _ = fs::remove_file(lock_file(&spec.image));
    let model = match spec.cpu {
        CpuModel::Default | CpuModel::Intel => "corei7_skylake_x",
        CpuModel::Amd => "ryzen",
        CpuModel::NoVirtualization => {
            return Err(Error::Usage(
                "the Bochs models used here all have VT-x or AMD-V: use QEMU for --cpu none".into(),
            ))
        }
    };
    // With input, Bochs listens on a local TCP port and waits for the runner
    // before it starts (Debian's Bochs has no unix sockets; pipes are Windows only).
    let com1 = match link {
        None => format!("mode=file, dev={}", serial_log.display()),
        Some(Endpoint::Tcp(addr)) => format!("mode=socket-server, dev={addr}"),
        Some(Endpoint::Unix(_)) => {
            return Err(Error::Usage(
                "Bochs serial input needs a TCP endpoint".into(),
            ))
        }
    };
    let rc = spec.work_dir.join("bochsrc");
    // ips=200M: Bochs counts time in instructions; with it the TSC advances one
    // tick per guest instruction, which makes benchmark figures repeatable.
    let text = format!(
        "megs: {megs}\n\
         cpu: model={model}, count={cpus}, ips=200000000, reset_on_triple_fault=0\n\
         romimage: file={BOCHS_BIOS}\n\
         vgaromimage: file={BOCHS_VGABIOS}\n\
         vga: extension=vbe\n\
         ata0-master: type=disk, path={image}, mode=flat\n\
         boot: disk\n\
         com1: enabled=1, {com1}\n\
         display_library: sdl2\n\
         log: {log}\n",
        megs = spec.memory_mib,
        cpus = spec.cpus,
        image = spec.image.display(),
        log = spec.work_dir.join("bochs.log").display(),
    );
    fs::write(&rc, text).map_err(|e| Error::io(&rc, e))?;
    // The built-in debugger waits at the first instruction until it reads `c`.
    let cont = spec.work_dir.join("bochs-continue");
    fs::write(&cont, "c\n").map_err(|e| Error::io(&cont, e))?;
    let mut cmd = Command::new("bochs");
    cmd.args(["-q", "-f"]).arg(&rc).arg("-rc").arg(&cont);
    // No `nogui` build here: SDL with its dummy driver stands in for a screen.
    if !spec.display {
        cmd.env("SDL_VIDEODRIVER", "dummy");
    }
    Ok(cmd)
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let (k, Some(v)) = (k.to_string_lossy(), v) {
            s.push_str(&format!("{k}={} ", v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Boots `spec.image` and waits for the kernel's result, the emulator's exit or
/// the timeout. Non-interactive runs echo nothing; interactive ones stream the
/// serial log to the terminal.
pub fn run(spec: &RunSpec) -> Result<Outcome, Error> {
    fs::create_dir_all(&spec.work_dir).map_err(|e| Error::io(&spec.work_dir, e))?;
    let serial_log = spec.work_dir.join("serial.log");
    fs::write(&serial_log, b"").map_err(|e| Error::io(&serial_log, e))?;
    if spec.interactive && !spec.input.is_empty() {
        return Err(Error::Usage(
            "scripted serial input needs a non-interactive run".into(),
        ));
    }
    let mut link = if spec.input.is_empty() {
        None
    } else {
        Some(SerialLink::new(spec.emulator, &serial_log)?)
    };
    let (mut cmd, kvm) = command_for(spec, &serial_log, link.as_ref().map(|l| &l.endpoint))?;
    let command = describe(&cmd);
    let emulator_log = spec.work_dir.join("emulator.log");
    let log_file = fs::File::create(&emulator_log).map_err(|e| Error::io(&emulator_log, e))?;
    let qemu_stdio = spec.interactive && spec.emulator == Emulator::Qemu;
    if !qemu_stdio {
        let err_file = log_file
            .try_clone()
            .map_err(|e| Error::io(&emulator_log, e))?;
        cmd.stdin(Stdio::null()).stdout(log_file).stderr(err_file);
    }
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| Error::Tool {
        tool: command.clone(),
        detail: e.to_string(),
    })?;
    let mut guard = ChildGuard(child);
    let mut echoed = 0usize;
    let echo = |serial: &[u8], echoed: &mut usize, all: bool| {
        // Whole lines only (a UTF-8 sequence is never cut), escaped: the log
        // holds guest output and goes to a terminal.
        let upto = if all {
            serial.len()
        } else {
            serial
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if spec.interactive && !qemu_stdio && upto > *echoed {
            let mut out = std::io::stdout();
            let _ = write!(
                out,
                "{}",
                hvcore::text::EscapedBytes(&serial[*echoed..upto])
            );
            let _ = out.flush();
            *echoed = upto;
        }
    };
    let mut steps = Steps::default();
    let ending = loop {
        if let Some(link) = link.as_mut() {
            link.connect();
        }
        // QEMU on the terminal ends by itself after the kernel's result and
        // puts the terminal back as it found it (killed, it could not), so
        // its log is only read at the end.
        let serial = if qemu_stdio {
            Vec::new()
        } else {
            fs::read(&serial_log).unwrap_or_default()
        };
        echo(&serial, &mut echoed, false);
        if let Some(link) = link.as_mut().filter(|l| l.connected()) {
            steps.advance(&spec.input, &serial, |bytes| link.send(bytes));
        }
        if let Some(code) = kernel_code_in(&String::from_utf8_lossy(&serial)) {
            // Give QEMU a moment to take the exit-device path by itself.
            std::thread::sleep(Duration::from_millis(200));
            break Ending::Kernel(code);
        }
        match guard.0.try_wait() {
            Ok(Some(status)) => {
                // The kernel may have written its last line just before the
                // emulator ended (Bochs exits on ACPI power-off): read it again.
                let serial = fs::read(&serial_log).unwrap_or_default();
                let logged = kernel_code_in(&String::from_utf8_lossy(&serial));
                break match (logged, status.code().and_then(kernel_code_from_qemu_status)) {
                    (Some(code), _) => Ending::Kernel(code),
                    (None, Some(code)) if spec.emulator == Emulator::Qemu => Ending::Kernel(code),
                    _ => Ending::EmulatorExited(status.code()),
                };
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Error::Tool {
                    tool: command,
                    detail: e.to_string(),
                })
            }
        }
        if let Some(limit) = spec.timeout {
            if start.elapsed() > limit {
                break Ending::TimedOut(limit);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    // The emulator is gone: the rest of its output reaches the log.
    drop(link.take());
    if spec.emulator == Emulator::Bochs {
        let _ = fs::remove_file(lock_file(&spec.image));
    }
    let serial = fs::read(&serial_log).unwrap_or_default();
    echo(&serial, &mut echoed, true);
    let serial = String::from_utf8_lossy(&serial).into_owned();
    Ok(Outcome {
        command,
        serial,
        elapsed: start.elapsed(),
        kvm,
        input_sent: steps.next,
        input_waiting: spec.input.get(steps.next).map(|s| s.wait_for.clone()),
        triple_fault: match (&ending, spec.emulator) {
            (Ending::EmulatorExited(_), Emulator::Qemu) => {
                fs::read_to_string(reset_log(&spec.work_dir))
                    .ok()
                    .and_then(|log| triple_fault_in(&log))
            }
            _ => None,
        },
        ending,
    })
}

/// QEMU's log of CPU resets (`-d cpu_reset`) for a run in `work_dir`.
fn reset_log(work_dir: &Path) -> PathBuf {
    work_dir.join("cpu-reset.log")
}

/// The CPUs' registers QEMU logged at the reset after a triple fault, if
/// one happened: each CPU's general and system registers, without the
/// FPU and vector state.
fn triple_fault_in(log: &str) -> Option<String> {
    let (_, after) = log.split_once("Triple fault\n")?;
    let kept: Vec<&str> = after
        .lines()
        .filter(|l| {
            !["DR", "CCS", "FCW", "FPR", "XMM", "YMM", "ZMM", "Opmask"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    Some(kept.join("\n"))
}

/// Where scripted input goes through the input steps.
#[derive(Debug, Default)]
struct Steps {
    /// The next step to send.
    next: usize,
    /// Where the output the next step looks at starts (the log's length when
    /// the previous step sent).
    from: usize,
    /// How far the next step has searched without a match.
    searched: usize,
}

impl Steps {
    /// Sends every step whose text `serial` shows, in order.
    fn advance(&mut self, steps: &[InputStep], serial: &[u8], mut send: impl FnMut(&[u8])) {
        while let Some(step) = steps.get(self.next) {
            let needle = step.wait_for.as_bytes();
            // Resume a little before the end of the last search: a match may
            // straddle it (and so may a line that cuts through the text).
            let back = match step.across {
                Some(_) => needle.len() + CUT_LINE_MAX,
                None => needle.len(),
            };
            let start = self
                .searched
                .saturating_sub(back)
                .max(self.from)
                .min(serial.len());
            let found = match &step.across {
                None => contains(&serial[start..], needle),
                Some(prefix) => contains(
                    &without_lines(&serial[start..], prefix.as_bytes()),
                    &without_lines(needle, prefix.as_bytes()),
                ),
            };
            if !found {
                self.searched = serial.len();
                return;
            }
            send(&step.send);
            self.next += 1;
            self.from = match steps.get(self.next) {
                Some(next) if next.anywhere => 0,
                _ => serial.len(),
            };
            self.searched = self.from;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The longest line an [`InputStep::across`] search expects to cut through
/// its text.
const CUT_LINE_MAX: usize = 512;

/// `text` without the lines that start with `prefix` and without line
/// breaks (CR, LF): what one VM printed, joined, where other VMs' lines
/// cut through it.
fn without_lines(text: &[u8], prefix: &[u8]) -> Vec<u8> {
    text.split(|&b| b == b'\n')
        .filter(|line| !line.starts_with(prefix))
        .flatten()
        .copied()
        .filter(|&b| b != b'\r')
        .collect()
}

/// Sockets serve as COM1 only in runs with input; their paths are unique per run.
static LINKS: AtomicUsize = AtomicUsize::new(0);

/// The emulator's end of the serial socket.
#[derive(Debug)]
enum Endpoint {
    /// A unix socket QEMU listens on.
    Unix(PathBuf),
    /// A local TCP port (Bochs).
    Tcp(SocketAddr),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(bytes),
            Stream::Tcp(s) => s.write_all(bytes),
        }
    }
}

/// The runner's side of a serial port that takes input: connected once
/// the emulator listens; a thread appends what the kernel sends to the
/// serial log.
struct SerialLink {
    endpoint: Endpoint,
    log: PathBuf,
    stream: Option<Stream>,
    copier: Option<JoinHandle<()>>,
}

impl SerialLink {
    fn new(emulator: Emulator, log: &Path) -> Result<SerialLink, Error> {
        let endpoint = match emulator {
            Emulator::Qemu => {
                // In the temporary folder: a unix socket path has at most 107 bytes.
                let n = LINKS.fetch_add(1, Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("hv-com1-{}-{n}.sock", std::process::id()));
                let _ = fs::remove_file(&path);
                Endpoint::Unix(path)
            }
            Emulator::Bochs => {
                // A port that was free a moment ago (Bochs cannot be told to
                // pick one and say which).
                let probe = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Tool {
                    tool: "a local TCP port for the serial port".into(),
                    detail: e.to_string(),
                })?;
                let addr = probe.local_addr().map_err(|e| Error::Tool {
                    tool: "a local TCP port for the serial port".into(),
                    detail: e.to_string(),
                })?;
                Endpoint::Tcp(addr)
            }
        };
        Ok(SerialLink {
            endpoint,
            log: log.to_path_buf(),
            stream: None,
            copier: None,
        })
    }

    fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// One attempt to connect (the emulator may not listen yet).
    fn connect(&mut self) {
        if self.stream.is_some() {
            return;
        }
        let stream = match &self.endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp(addr) => TcpStream::connect_timeout(addr, Duration::from_millis(200))
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
        };
        let Ok(stream) = stream else { return };
        let (Ok(mut reader), Ok(mut log)) = (
            stream.try_clone(),
            fs::OpenOptions::new().append(true).open(&self.log),
        ) else {
            return;
        };
        self.copier = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if log.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }));
        self.stream = Some(stream);
    }

    /// Types `bytes` (a failure means the emulator is gone, which the run
    /// loop sees by itself).
    fn send(&mut self, bytes: &[u8]) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.write_all(bytes);
        }
    }
}

impl Drop for SerialLink {
    /// Once the emulator has ended, the copier reads what is left and sees
    /// the end of the stream; it is cut off if that takes long.
    fn drop(&mut self) {
        if let Some(copier) = self.copier.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !copier.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(stream) = self.stream.as_ref() {
                stream.shutdown();
            }
            let _ = copier.join();
        }
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker_is_parsed() {
        let log = "banner\nHV-EXIT 0x10 success\n";
        assert_eq!(kernel_code_in(log), Some(0x10));
        assert_eq!(kernel_code_in("no marker here"), None);
        assert_eq!(kernel_code_in("HV-EXIT garbage\n"), None);
        // A line still being written is not a result yet.
        assert_eq!(kernel_code_in("banner\nHV-EXIT 0x1"), None);
        assert_eq!(kernel_code_in("HV-EXIT 0x10 success\r\n"), Some(0x10));
    }

    #[test]
    fn only_the_kernel_ends_a_run() {
        // A guest printing the marker appears prefixed: no result.
        let log =
            "[    1.000000] INFO  started 1 of 1 VM(s): evil\nvm evil: HV-EXIT 0x10 success\n";
        assert_eq!(kernel_code_in(log), None);
        assert_eq!(
            kernel_code_in("vm evil: HV-EXIT 0x13\nxHV-EXIT 0x10\n"),
            None
        );
        // The kernel's own line after it still counts.
        let log = format!("{log}HV-EXIT 0x11 failure\n");
        assert_eq!(kernel_code_in(&log), Some(0x11));
        let o = outcome(Ending::Kernel(0x11), &log);
        assert_eq!(exit_status(&o, true), 0x11);
    }

    #[test]
    fn guest_and_kernel_lines_are_told_apart() {
        assert_eq!(guest_line("vm alpha: hello"), Some(("alpha", "hello")));
        assert_eq!(
            guest_line("vm a-b_c.1: report 1=2\r"),
            Some(("a-b_c.1", "report 1=2"))
        );
        assert_eq!(
            guest_line("vm alpha (id 0) stopped: shutdown, exit code 0"),
            None
        );
        assert_eq!(
            guest_line("[    0.500000] INFO  vm alpha: 16 MiB at host 0x4000000"),
            None
        );
        assert_eq!(guest_line("vm : x"), None);
        assert_eq!(guest_line("stats for vm hello:"), None);
        assert_eq!(
            kernel_log_line("[    1.234567] INFO  started 2 of 3 VM(s): a, b"),
            Some(("INFO", "started 2 of 3 VM(s): a, b"))
        );
        assert_eq!(
            kernel_log_line("[12345.000001] WARN  no VM could be started"),
            Some(("WARN", "no VM could be started"))
        );
        assert_eq!(
            kernel_log_line("vm a: [    1.000000] INFO  started 1 of 1 VM(s)"),
            None
        );
        assert_eq!(kernel_log_line("[ x.y] INFO  nope"), None);
        assert_eq!(kernel_log_line("[    1.000000] LOUD  nope"), None);
    }

    fn outcome(ending: Ending, serial: &str) -> Outcome {
        Outcome {
            command: "qemu".into(),
            ending,
            serial: serial.into(),
            elapsed: Duration::from_secs(1),
            kvm: false,
            input_sent: 0,
            input_waiting: None,
            triple_fault: None,
        }
    }

    #[test]
    fn exit_status_says_how_the_vms_fared() {
        let ok = Ending::Kernel(KernelExit::Success as u32);
        let run = |serial: &str| exit_status(&outcome(ok.clone(), serial), true);
        assert_eq!(
            run("[    1.000000] INFO  started 3 of 3 VM(s): a, b, c\nHV-EXIT 0x10 success\n"),
            status::OK
        );
        assert_eq!(
            run("[    1.000000] ERROR vm \"huge\": memory: 1 GiB is more than ...; not started\n\
                 [    1.000000] INFO  started 4 of 6 VM(s): escape, hvmem, triple, hello\nHV-EXIT 0x10 success\n"),
            status::VMS_REFUSED
        );
        assert_eq!(
            run("[    1.000000] INFO  started 0 of 2 VM(s): \n[    1.000000] WARN  no VM could be started\n"),
            status::NO_VM_STARTED
        );
        assert_eq!(run("VT-x not available\n[    1.000000] INFO  no VMs started: this CPU cannot run them\n"), status::NO_VM_STARTED);
        assert_eq!(
            run("HV-EXIT 0x10 success\n"),
            status::NO_VM_STARTED,
            "no start report at all"
        );
        // A guest cannot fake the report.
        assert_eq!(
            run("[    1.000000] INFO  started 1 of 2 VM(s): a\nvm a: [    2.000000] INFO  started 2 of 2 VM(s): a, b\n"),
            status::VMS_REFUSED
        );
        // Other commands, and other endings.
        assert_eq!(
            exit_status(&outcome(ok, "HV-EXIT 0x10 success\n"), false),
            status::OK
        );
        assert_eq!(exit_status(&outcome(Ending::Kernel(0x12), ""), true), 0x12);
        assert_eq!(exit_status(&outcome(Ending::Kernel(0x1234), ""), true), 255);
        assert_eq!(
            exit_status(&outcome(Ending::TimedOut(Duration::from_secs(1)), ""), true),
            status::TIMED_OUT
        );
        assert_eq!(
            exit_status(&outcome(Ending::EmulatorExited(Some(1)), ""), true),
            status::EMULATOR_DIED
        );
    }

    #[test]
    fn failure_reports_escape_the_serial_log() {
        let o = outcome(
            Ending::TimedOut(Duration::from_secs(1)),
            "ok\nvm x: \x1b[2Jgone\n",
        );
        let shown = o.to_string();
        assert!(
            !shown.contains('\x1b') && shown.contains("vm x: \\x1b[2Jgone"),
            "{shown}"
        );
    }

    #[test]
    fn an_input_step_may_wait_across_other_vms_lines() {
        // The kernel broke the attached VM's "ttyS0" with another VM's line.
        let log = b"  4:   101   XT-PIC      t\nvm counter: report 1=5\ntyS0\r\n";
        let across = [InputStep::new("ttyS0", [0x1d]).across_lines_of("vm counter: ")];
        let plain = [InputStep::new("ttyS0", [0x1d])];
        let mut sent = Vec::new();
        Steps::default().advance(&plain, log, |b| sent.push(b.to_vec()));
        assert!(sent.is_empty(), "a plain step needs the text unbroken");
        let mut at = Steps::default();
        at.advance(&across, &log[..30], |b| sent.push(b.to_vec()));
        assert!(sent.is_empty());
        // The rest arrives in a later read: the search goes back far enough.
        at.advance(&across, log, |b| sent.push(b.to_vec()));
        assert_eq!(sent, [vec![0x1d]]);
        // Only lines with the prefix are left out.
        assert_eq!(
            without_lines(b"a\r\nvm counter: x\nb\nvm other: y\n", b"vm counter: "),
            b"abvm other: y"
        );
    }

    #[test]
    fn input_steps_wait_for_output_after_the_previous_send() {
        let steps = [
            InputStep::new("login", "0"),
            InputStep::new("attached", "echo\n"),
            InputStep::new("attached", [0x1d]),
        ];
        let mut at = Steps::default();
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut log = b"boot".to_vec();
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        assert!(sent.is_empty());
        // A match split across two reads of the log still counts.
        log.extend_from_slice(b" log");
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        log.extend_from_slice(b"in: attached");
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        // What was in the log before the send does not count for the next step.
        assert_eq!(sent, [b"0".to_vec()]);
        log.extend_from_slice(b"console: attached");
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        // Step 2 saw "attached" after step 1's send; step 3 needs a new one.
        assert_eq!(sent, [b"0".to_vec(), b"echo\n".to_vec()]);
        assert_eq!(at.next, 2);
        log.extend_from_slice(b"\nattac");
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        assert_eq!(at.next, 2);
        log.extend_from_slice(b"hed\n");
        at.advance(&steps, &log, |b| sent.push(b.to_vec()));
        assert_eq!(sent.last().unwrap(), &[0x1d]);
        assert_eq!(at.next, 3);
        at.advance(&steps, &log, |_| panic!("no steps left"));
    }

    #[test]
    fn a_triple_fault_in_qemus_reset_log_keeps_the_registers() {
        let power_on = "CPU Reset (CPU 0)\nEAX=00000000 EBX=00000000\nXMM00=0 0\n";
        assert_eq!(triple_fault_in(power_on), None);
        let log = format!(
            "{power_on}Triple fault\nCPU Reset (CPU 0)\nRAX=0000000000000001 RBX=0\n\
             RIP=ffffff8000001234 RFL=00000002\nCR0=80010033 CR2=0 CR3=1000 CR4=20\n\
             DR0=0 DR1=0\nFCW=037f FSW=0000\nXMM00=0 0\nCPU Reset (CPU 1)\nRIP=0\n"
        );
        assert_eq!(
            triple_fault_in(&log).as_deref(),
            Some(
                "CPU Reset (CPU 0)\nRAX=0000000000000001 RBX=0\nRIP=ffffff8000001234 RFL=00000002\n\
                 CR0=80010033 CR2=0 CR3=1000 CR4=20\nCPU Reset (CPU 1)\nRIP=0"
            )
        );
    }

    #[test]
    fn an_input_step_may_count_output_from_before_the_previous_send() {
        // Two events in either order, then `q`.
        let steps = [
            InputStep::new("crasher stopped", []),
            InputStep::new("restart 2", "q").anywhere(),
        ];
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut at = Steps::default();
        let log = b"restart 2\ncrasher stopped\n";
        at.advance(&steps, log, |b| sent.push(b.to_vec()));
        assert_eq!(sent, [b"".to_vec(), b"q".to_vec()]);
        // Without `anywhere` the second step waits for a new line.
        let strict = [steps[0].clone(), InputStep::new("restart 2", "q")];
        let mut at = Steps::default();
        sent.clear();
        at.advance(&strict, log, |b| sent.push(b.to_vec()));
        assert_eq!(sent, [b"".to_vec()]);
    }

    #[test]
    fn interactive_runs_take_no_scripted_input() {
        let spec = RunSpec {
            emulator: Emulator::Qemu,
            firmware: Firmware::Bios,
            image: "/nonexistent.img".into(),
            memory_mib: 64,
            cpus: 1,
            cpu: CpuModel::Default,
            gdb: false,
            display: false,
            interactive: true,
            timeout: None,
            work_dir: std::env::temp_dir().join(format!("hv-run-test-{}", std::process::id())),
            input: vec![InputStep::new("", "x")],
            control: None,
        };
        let e = run(&spec).unwrap_err();
        let _ = fs::remove_dir_all(&spec.work_dir);
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }

    #[test]
    fn qemu_status_maps_to_kernel_code() {
        assert_eq!(kernel_code_from_qemu_status(33), Some(0x10));
        assert_eq!(kernel_code_from_qemu_status(35), Some(0x11));
        assert_eq!(kernel_code_from_qemu_status(1), None);
        assert_eq!(kernel_code_from_qemu_status(0), None);
        assert_eq!(kernel_code_from_qemu_status(2), None);
    }
}
