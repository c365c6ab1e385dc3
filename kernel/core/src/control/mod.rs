//! The run-time control protocol (version [`PROTOCOL_VERSION`]): requests
//! that manage VMs while the hypervisor runs, read from the second serial
//! port (COM2) as one JSON object per line, or typed on the human console
//! as words (`create web image=hello memory=16 cpus=1`).
//!
//! Everything here is pure: [`parse_request`] and [`parse_words`] turn a
//! line into a [`Request`] or an error that names the problem (never a
//! panic, whatever the bytes); [`create_spec`] checks a `create` with the
//! configuration file's rules ([`crate::config::check_vm`]) plus the
//! run-time ones (a name in use, the largest free block); [`check_op`] says
//! which operations a VM's state allows. The kernel answers with
//! [`json::Obj`] lines carrying the request's id, and writes events
//! (`{"event":"stopped",...}`) in between.

pub mod json;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::config::{
    self, GuestMode, ImageInfo, ImageKind, MachineLimits, Problem, RebootPolicy, VmSpec, MIB,
};
use crate::text::Escaped;
use json::Value;

/// The protocol's version, reported by the `ready` event and `version`.
pub const PROTOCOL_VERSION: u64 = 1;
/// The longest string field (a command line may be longer, see
/// [`config::MAX_CMDLINE_LEN`]).
pub const MAX_STRING: usize = 256;
/// The largest memory a request may ask for, MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The default slice of a VM created at run time, microseconds.
pub const DEFAULT_SLICE_US: u32 = 10_000;

/// A VM named in a request: by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmRef {
    /// Its id.
    Id(u32),
    /// Its name.
    Name(String),
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRef::Id(id) => write!(f, "id {id}"),
            VmRef::Name(n) => write!(f, "\"{}\"", Escaped(n)),
        }
    }
}

/// The request line for `command` with `id`: what [`parse_request`] reads
/// back (the host CLI writes it).
pub fn request_line(id: u64, command: &Command) -> String {
    let o = json::Obj::new().num("id", id).str("cmd", command.name());
    let o = match command {
        Command::Create(c) => {
            let cpus: Vec<u64> = c.cpus.iter().map(|&c| u64::from(c)).collect();
            let o = o
                .str("name", &c.name)
                .str("image", &c.image)
                .num("memory_mib", c.memory_mib)
                .nums("cpus", &cpus)
                .num("slice_us", u64::from(c.slice_us));
            if c.cmdline.is_empty() {
                o
            } else {
                o.str("cmdline", &c.cmdline)
            }
        }
        other => match other.vm() {
            Some(VmRef::Id(id)) => o.num("vm", u64::from(*id)),
            Some(VmRef::Name(n)) => o.str("vm", n),
            None => o,
        },
    };
    o.end()
}

/// A readable table: a header row and rows of cells, columns padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(&format!("{c:<w$}"));
        }
        let trimmed = out[start..].trim_end().len();
        out.truncate(start + trimmed);
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out.pop();
    out
}

/// The columns of `list`.
pub const LIST_HEADER: [&str; 8] = [
    "ID", "NAME", "STATE", "CPUS", "MIB", "UPTIME_S", "EXITS/S", "CPU",
];

/// One `list` row's cells from a VM object of the `list` response.
pub fn list_row(vm: &Value) -> Vec<String> {
    let num = |k: &str| vm.get(k).and_then(Value::as_num).unwrap_or(0);
    let cpus: Vec<String> = match vm.get("cpus") {
        Some(Value::Arr(a)) => a
            .iter()
            .filter_map(Value::as_num)
            .map(|c| format!("{c}"))
            .collect(),
        _ => Vec::new(),
    };
    let (up, share) = (num("uptime_ms"), num("cpu_permille"));
    alloc::vec![
        format!("{}", num("vm_id")),
        String::from(vm.get("name").and_then(Value::as_str).unwrap_or("?")),
        String::from(vm.get("state").and_then(Value::as_str).unwrap_or("?")),
        cpus.join(","),
        format!("{}", num("memory_mib")),
        format!("{}.{:03}", up / 1000, up % 1000),
        format!("{}", num("exits_per_s")),
        format!("{}.{}%", share / 10, share % 10),
    ]
}

/// What `create` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    /// The new VM's name.
    pub name: String,
    /// The image (or kernel) from the boot package's image library, by name.
    pub image: String,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Physical CPUs (the first runs it).
    pub cpus: Vec<u32>,
    /// Time slice, microseconds.
    pub slice_us: u32,
    /// Kernel command line (kernels only).
    pub cmdline: String,
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Every VM with its state and figures.
    List,
    /// One VM in detail.
    Info(VmRef),
    /// A new VM from the image library, started at once.
    Create(CreateRequest),
    /// Boot a stopped VM afresh.
    Start(VmRef),
    /// Stop a running VM (its memory returns to the pool; it can start again).
    Stop(VmRef),
    /// Stop (if running) and boot afresh.
    Restart(VmRef),
    /// Stop (if running) and forget the VM.
    Destroy(VmRef),
    /// Attach the human console (COM1) to the VM's UART.
    Console(VmRef),
    /// Free and used memory, CPUs and their VMs.
    Pool,
    /// Zero every VM's counters.
    StatsReset,
    /// Stop every VM, then end the hypervisor.
    Shutdown,
    /// The protocol version and the image library.
    Version,
}

impl Command {
    /// The command's name in the protocol.
    pub fn name(&self) -> &'static str {
        match self {
            Command::List => "list",
            Command::Info(_) => "info",
            Command::Create(_) => "create",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Restart(_) => "restart",
            Command::Destroy(_) => "destroy",
            Command::Console(_) => "console",
            Command::Pool => "pool",
            Command::StatsReset => "stats-reset",
            Command::Shutdown => "shutdown",
            Command::Version => "version",
        }
    }

    /// The VM the command is about, if any.
    pub fn vm(&self) -> Option<&VmRef> {
        match self {
            Command::Info(v)
            | Command::Start(v)
            | Command::Stop(v)
            | Command::Restart(v)
            | Command::Destroy(v)
            | Command::Console(v) => Some(v),
            _ => None,
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The caller's id, echoed in the response.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// A request refused before anything was done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<u64>,
    /// What is wrong.
    pub message: String,
}

/// The fields each command takes (besides `id` and `cmd`).
fn fields_of(cmd: &str) -> Option<&'static [&'static str]> {
    Some(match cmd {
        "list" | "pool" | "stats-reset" | "shutdown" | "version" => &[],
        "info" | "start" | "stop" | "restart" | "destroy" | "console" => &["vm"],
        "create" => &["name", "image", "memory_mib", "cpus", "slice_us", "cmdline"],
        _ => return None,
    })
}

/// Every command, for messages and help.
pub const COMMANDS: &[&str] = &[
    "list",
    "info",
    "create",
    "start",
    "stop",
    "restart",
    "destroy",
    "console",
    "pool",
    "stats-reset",
    "shutdown",
    "version",
];

/// Parses one protocol line (JSON object, at most [`json::MAX_LINE`] bytes).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let v = json::parse(line).map_err(|e| RequestError {
        id: None,
        message: e.to_string(),
    })?;
    let Value::Obj(members) = &v else {
        return Err(RequestError {
            id: None,
            message: format!("a request is a JSON object, not {}", v.kind()),
        });
    };
    let id = match v.get("id") {
        Some(Value::Num(n)) => *n,
        Some(other) => {
            return Err(RequestError {
                id: None,
                message: format!("field \"id\" must be a number, not {}", other.kind()),
            })
        }
        None => {
            return Err(RequestError {
                id: None,
                message: "missing field \"id\"".into(),
            })
        }
    };
    let fail = |message: String| RequestError {
        id: Some(id),
        message,
    };
    let cmd = match v.get("cmd") {
        Some(Value::Str(s)) => s.as_str(),
        Some(other) => {
            return Err(fail(format!(
                "field \"cmd\" must be a string, not {}",
                other.kind()
            )))
        }
        None => return Err(fail("missing field \"cmd\"".into())),
    };
    let Some(allowed) = fields_of(cmd) else {
        return Err(fail(format!(
            "unknown command \"{}\" (commands: {})",
            Escaped(cut(cmd)),
            COMMANDS.join(", ")
        )));
    };
    for (key, _) in members {
        if key != "id" && key != "cmd" && !allowed.contains(&key.as_str()) {
            return Err(fail(format!(
                "unknown field \"{}\" for {cmd}",
                Escaped(cut(key))
            )));
        }
    }
    let mut fields = Fields::default();
    for (key, val) in members {
        if key == "id" || key == "cmd" {
            continue;
        }
        fields.set(key, FieldValue::Json(val)).map_err(fail)?;
    }
    build(cmd, fields)
        .map(|command| Request { id, command })
        .map_err(fail)
}

/// Parses a line typed on the human console: a command and its arguments
/// as words, `key=value` for the optional ones (`create NAME image=IMG
/// memory=MIB cpus=0,1 slice=US cmdline="..."`; a VM by name or id).
pub fn parse_words(line: &str) -> Result<Command, String> {
    let words = split_words(line)?;
    let Some((cmd, rest)) = words.split_first() else {
        return Err("empty command".into());
    };
    let cmd = match cmd.as_str() {
        "ls" => "list",
        "stats" if rest.first().map(String::as_str) == Some("reset") => "stats-reset",
        other => other,
    };
    let rest = if cmd == "stats-reset" && words.len() > 1 && words[0] == "stats" {
        &rest[1..]
    } else {
        rest
    };
    let Some(allowed) = fields_of(cmd) else {
        return Err(format!(
            "unknown command \"{}\" (try help)",
            Escaped(cut(cmd))
        ));
    };
    let mut fields = Fields::default();
    for (i, word) in rest.iter().enumerate() {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => {
                let k = match k {
                    "memory" | "mem" => "memory_mib",
                    "slice" => "slice_us",
                    k => k,
                };
                (k, v)
            }
            // The first bare word is the VM (or the new VM's name).
            None if i == 0 && allowed.first().is_some_and(|f| *f == "vm" || *f == "name") => {
                (allowed[0], word.as_str())
            }
            None => {
                return Err(format!(
                    "unexpected word \"{}\" (use key=value)",
                    Escaped(cut(word))
                ))
            }
        };
        if !allowed.contains(&key) {
            return Err(format!("unknown field \"{}\" for {cmd}", Escaped(cut(key))));
        }
        fields.set(key, FieldValue::Word(value))?;
    }
    build(cmd, fields)
}

fn cut(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(core::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

enum FieldValue<'a> {
    Json(&'a Value),
    Word(&'a str),
}

#[derive(Default)]
struct Fields {
    vm: Option<VmRef>,
    name: Option<String>,
    image: Option<String>,
    memory_mib: Option<u64>,
    cpus: Option<Vec<u32>>,
    slice_us: Option<u32>,
    cmdline: Option<String>,
}

impl Fields {
    fn set(&mut self, key: &str, v: FieldValue<'_>) -> Result<(), String> {
        let string = |limit: usize| -> Result<String, String> {
            let s = match &v {
                FieldValue::Json(Value::Str(s)) => s.as_str(),
                FieldValue::Json(other) => {
                    return Err(format!(
                        "field \"{key}\" must be a string, not {}",
                        other.kind()
                    ))
                }
                FieldValue::Word(w) => w,
            };
            if s.len() > limit {
                return Err(format!(
                    "field \"{key}\" is too long ({} bytes, at most {limit})",
                    s.len()
                ));
            }
            Ok(s.into())
        };
        let number = |max: u64| -> Result<u64, String> {
            let n = match &v {
                FieldValue::Json(Value::Num(n)) => *n,
                FieldValue::Json(other) => {
                    return Err(format!(
                        "field \"{key}\" must be a number, not {}",
                        other.kind()
                    ))
                }
                FieldValue::Word(w) => w
                    .parse::<u64>()
                    .map_err(|_| format!("field \"{key}\" must be a number"))?,
            };
            if n > max {
                return Err(format!("field \"{key}\" is too large ({n}, at most {max})"));
            }
            Ok(n)
        };
        match key {
            "vm" => {
                self.vm = Some(match &v {
                    FieldValue::Json(Value::Num(n)) => VmRef::Id(
                        u32::try_from(*n).map_err(|_| "field \"vm\" is too large".to_string())?,
                    ),
                    FieldValue::Word(w)
                        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        VmRef::Id(
                            w.parse()
                                .map_err(|_| "field \"vm\" is too large".to_string())?,
                        )
                    }
                    _ => VmRef::Name(string(MAX_STRING)?),
                })
            }
            "name" => self.name = Some(string(MAX_STRING)?),
            "image" => self.image = Some(string(MAX_STRING)?),
            "cmdline" => self.cmdline = Some(string(config::MAX_CMDLINE_LEN)?),
            "memory_mib" => self.memory_mib = Some(number(MAX_MEMORY_MIB)?),
            "slice_us" => self.slice_us = Some(number(u64::from(u32::MAX))? as u32),
            "cpus" => {
                let list: Vec<u64> = match &v {
                    FieldValue::Json(Value::Arr(items)) => items
                        .iter()
                        .map(|i| {
                            i.as_num().ok_or_else(|| {
                                "field \"cpus\" must be an array of numbers".to_string()
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    FieldValue::Json(Value::Num(n)) => alloc::vec![*n],
                    FieldValue::Json(other) => {
                        return Err(format!(
                            "field \"cpus\" must be an array of numbers, not {}",
                            other.kind()
                        ))
                    }
                    FieldValue::Word(w) => w
                        .split(',')
                        .map(|p| {
                            p.trim()
                                .parse::<u64>()
                                .map_err(|_| "field \"cpus\" must be numbers like 0,1".to_string())
                        })
                        .collect::<Result<_, _>>()?,
                };
                if list.len() > config::MAX_CPUS as usize {
                    return Err(format!(
                        "field \"cpus\" is too long ({} entries, at most {})",
                        list.len(),
                        config::MAX_CPUS
                    ));
                }
                self.cpus = Some(
                    list.into_iter()
                        .map(|c| u32::try_from(c).unwrap_or(u32::MAX))
                        .collect(),
                );
            }
            _ => return Err(format!("unknown field \"{}\"", Escaped(cut(key)))),
        }
        Ok(())
    }
}

fn build(cmd: &str, mut f: Fields) -> Result<Command, String> {
    let mut vm = || {
        f.vm.take()
            .ok_or_else(|| format!("missing field \"vm\" for {cmd}"))
    };
    Ok(match cmd {
        "list" => Command::List,
        "pool" => Command::Pool,
        "stats-reset" => Command::StatsReset,
        "shutdown" => Command::Shutdown,
        "version" => Command::Version,
        "info" => Command::Info(vm()?),
        "start" => Command::Start(vm()?),
        "stop" => Command::Stop(vm()?),
        "restart" => Command::Restart(vm()?),
        "destroy" => Command::Destroy(vm()?),
        "console" => Command::Console(vm()?),
        "create" => {
            let missing = |k: &str| format!("missing field \"{k}\" for create");
            Command::Create(CreateRequest {
                name: f.name.ok_or_else(|| missing("name"))?,
                image: f.image.ok_or_else(|| missing("image"))?,
                memory_mib: f.memory_mib.ok_or_else(|| missing("memory_mib"))?,
                cpus: f.cpus.unwrap_or_else(|| alloc::vec![0]),
                slice_us: f.slice_us.unwrap_or(DEFAULT_SLICE_US),
                cmdline: f.cmdline.unwrap_or_default(),
            })
        }
        _ => return Err(format!("unknown command \"{}\"", Escaped(cut(cmd)))),
    })
}

/// What a `create` is checked against at run time.
pub struct CreateLimits<'a> {
    /// The boot package's image table (the image library).
    pub images: &'a [ImageInfo<'a>],
    /// CPUs of the machine.
    pub cpu_count: u32,
    /// The largest free block of memory a VM could get, bytes.
    pub largest_free: u64,
}

/// Turns a `create` into the [`VmSpec`] the kernel builds, or the message
/// that refuses it. `in_use(name)` says whether a VM of that name exists.
pub fn create_spec(
    req: &CreateRequest,
    limits: &CreateLimits<'_>,
    in_use: impl Fn(&str) -> bool,
) -> Result<VmSpec, String> {
    let Some(index) = limits.images.iter().position(|i| i.name == req.image) else {
        let names: Vec<&str> = limits.images.iter().map(|i| i.name).collect();
        return Err(format!(
            "no image \"{}\" in the image library (images: {})",
            Escaped(&req.image),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ));
    };
    let image = &limits.images[index];
    let mode = match image.kind {
        ImageKind::Elf => GuestMode::Long64,
        ImageKind::Flat => {
            return Err(format!(
                "image \"{}\" is a flat binary; run-time VMs boot ELF images and kernels",
                Escaped(image.name)
            ))
        }
        kind => kind.kernel_mode().unwrap_or(GuestMode::Long64),
    };
    if !mode.is_kernel() && !req.cmdline.is_empty() {
        return Err(format!(
            "cmdline: image \"{}\" is not a kernel; a command line is for kernels only",
            Escaped(image.name)
        ));
    }
    if in_use(&req.name) {
        return Err(format!("name \"{}\" is already in use", Escaped(&req.name)));
    }
    if let Some(&cpu) = req.cpus.iter().find(|&&c| c >= limits.cpu_count) {
        return Err(format!(
            "no such CPU {cpu} (the machine has {})",
            limits.cpu_count
        ));
    }
    let spec = VmSpec {
        name: req.name.clone(),
        memory_bytes: req.memory_mib.saturating_mul(MIB),
        host_base: None,
        cpus: req.cpus.clone(),
        image: index as u32,
        slice_us: req.slice_us,
        entry: None,
        load_addr: None,
        mode,
        initrd: None,
        cmdline: req.cmdline.clone(),
        on_reboot: RebootPolicy::default_for(mode),
    };
    let machine = MachineLimits {
        cpu_count: Some(limits.cpu_count),
        memory: None,
    };
    let mut problems: Vec<Problem> = Vec::new();
    config::check_vm(&spec, limits.images, &machine, &mut problems);
    if let Some(p) = problems.first() {
        let msg: Vec<String> = problems
            .iter()
            .map(|p| match p.field() {
                Some(field) => format!("{}: {p}", field.key()),
                None => format!("{p}"),
            })
            .collect();
        let _ = p;
        return Err(msg.join("; "));
    }
    if spec.memory_bytes > limits.largest_free {
        return Err(format!(
            "not enough free memory for {} MiB (largest block {} MiB)",
            req.memory_mib,
            limits.largest_free / MIB
        ));
    }
    Ok(spec)
}

/// A VM's state as the control protocol shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Being built on its CPU.
    Creating,
    /// Running (or halted, waiting for an interrupt).
    Running,
    /// Stopped: no memory held, can start again.
    Stopped,
}

impl VmState {
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
        }
    }
}

/// Whether `command` may be applied to a VM in `state` (`Err` names why not).
pub fn check_op(command: &Command, name: &str, state: VmState) -> Result<(), String> {
    let busy = || {
        Err(format!(
            "vm \"{}\" is being created; try again",
            Escaped(name)
        ))
    };
    match (command, state) {
        (_, VmState::Creating) if !matches!(command, Command::Info(_)) => busy(),
        (Command::Stop(_), VmState::Stopped) => {
            Err(format!("vm \"{}\" is already stopped", Escaped(name)))
        }
        (Command::Start(_), VmState::Running) => {
            Err(format!("vm \"{}\" is already running", Escaped(name)))
        }
        (Command::Console(_), VmState::Stopped) => {
            Err(format!("vm \"{}\" is not running", Escaped(name)))
        }
        _ => Ok(()),
    }
}

/// The lowest id not in `used` (ids of VMs created at run time are reused
/// once destroyed, which keeps AMD-V ASIDs, VM id + 1, within their range).
pub fn free_id(used: impl Iterator<Item = u32> + Clone) -> u32 {
    (0u32..)
        .find(|id| !used.clone().any(|u| u == *id))
        .unwrap_or(u32::MAX)
}

/// Whether a stop reason is a fault (the `faulted` event) rather than a
/// requested or clean stop (`stopped`).
pub fn is_fault(reason: Option<&crate::arch::StopReason>) -> bool {
    use crate::arch::StopReason::*;
    !matches!(reason, None | Some(Shutdown { .. } | HostStop))
}

#[cfg(test)]
mod tests;
