//! `boot ctl`: the host side of the control protocol (issue 11).
//!
//! Connects to the hypervisor's COM2 (QEMU's unix socket chardev, a Bochs
//! `socket-server` TCP port, or a real serial device), sends one request
//! line, and prints the response as a readable table, or as the raw JSON
//! line with `--json`. `watch` prints the event lines as they come.
//!
//! ```text
//! boot ctl [--socket PATH | --tcp HOST:PORT | --device /dev/ttyS1] [--json] [--timeout SECS] COMMAND [ARGS]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use hvcore::control::json::{self, Value};
use hvcore::control::{self, Command};

use crate::Error;

/// Where `./qemu-run.sh` (`boot run`) puts the control socket.
pub fn default_socket() -> PathBuf {
    crate::kernel_build::output_dir(&crate::kernel_build::repo_root()).join("run/control.sock")
}

/// Help for `boot ctl`.
pub const HELP: &str = "\
boot ctl [--socket PATH | --tcp HOST:PORT | --device DEV] [--json] [--timeout SECS] COMMAND [ARGS]
  talks to a running hypervisor's control port (COM2); default socket: target/run/control.sock
  COMMAND: list | info VM | create NAME image=IMG memory=MIB [cpus=0,1] [slice=US] [cmdline=\"...\"]
           start VM | stop VM | restart VM | destroy VM | console VM | pool | stats reset | version
           shutdown | watch (print events until interrupted)
  --json prints the response line as it came (for scripts); the exit status is 0 for ok, 1 for an error response";

/// Parsed `ctl` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlOptions {
    /// Where to connect.
    pub target: Target,
    /// Print JSON lines instead of tables.
    pub json: bool,
    /// How long to wait for the response.
    pub timeout: Duration,
    /// The command words.
    pub words: Vec<String>,
}

/// The control port's host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket (QEMU chardev).
    Socket(PathBuf),
    /// A TCP port (Bochs socket-server).
    Tcp(String),
    /// A serial device (set it to 115200 raw first: `stty -F DEV 115200 raw -echo`).
    Device(PathBuf),
}

/// Parses the arguments after `ctl`.
pub fn parse_args(args: &[String]) -> Result<CtlOptions, Error> {
    let mut target = Target::Socket(default_socket());
    let mut json = false;
    let mut timeout = Duration::from_secs(30);
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--socket" if words.is_empty() => target = Target::Socket(value("--socket")?.into()),
            "--tcp" if words.is_empty() => target = Target::Tcp(value("--tcp")?),
            "--device" if words.is_empty() => target = Target::Device(value("--device")?.into()),
            "--json" => json = true,
            "--timeout" if words.is_empty() => {
                let v = value("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=86_400).contains(s))
                    .ok_or_else(|| {
                        Error::Usage(format!("--timeout {v}: expected 1 to 86400 seconds"))
                    })?;
                timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" if words.is_empty() => return Err(Error::Usage(HELP.into())),
            _ => words.push(a.clone()),
        }
    }
    if words.is_empty() {
        return Err(Error::Usage(format!("ctl: no command\n{HELP}")));
    }
    Ok(CtlOptions {
        target,
        json,
        timeout,
        words,
    })
}

enum Link {
    Unix(UnixStream),
    Tcp(TcpStream),
    Dev(std::fs::File),
}

impl Link {
    fn open(target: &Target, timeout: Duration) -> Result<Link, Error> {
        let fail = |what: String, e: std::io::Error| Error::Tool {
            tool: what,
            detail: e.to_string(),
        };
        Ok(match target {
            Target::Socket(p) => {
                let s = UnixStream::connect(p).map_err(|e| {
                    fail(
                        format!(
                            "the control socket {} (is the hypervisor running with ./qemu-run.sh?)",
                            p.display()
                        ),
                        e,
                    )
                })?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| fail("socket".into(), e))?;
                Link::Unix(s)
            }
            Target::Tcp(a) => {
                let s =
                    TcpStream::connect(a).map_err(|e| fail(format!("the control port {a}"), e))?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| fail("socket".into(), e))?;
                Link::Tcp(s)
            }
            Target::Device(p) => Link::Dev(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .map_err(|e| fail(format!("the serial device {}", p.display()), e))?,
            ),
        })
    }

    fn reader(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Link::Unix(s) => Box::new(s.try_clone()?),
            Link::Tcp(s) => Box::new(s.try_clone()?),
            Link::Dev(f) => Box::new(f.try_clone()?),
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let bytes = format!("{line}\n");
        match self {
            Link::Unix(s) => s.write_all(bytes.as_bytes()),
            Link::Tcp(s) => s.write_all(bytes.as_bytes()),
            Link::Dev(f) => f.write_all(bytes.as_bytes()),
        }
    }
}

/// A connection to the control port that sends requests and returns their
/// responses, collecting the event lines it reads on the way (tests use it).
pub struct Client {
    link: Link,
    lines: BufReader<Box<dyn Read + Send>>,
    next_id: u64,
    /// Event lines read so far (in order), each parsed.
    pub events: Vec<Value>,
}

impl Client {
    /// Connects.
    pub fn connect(target: &Target, timeout: Duration) -> Result<Client, Error> {
        let link = Link::open(target, timeout)?;
        let reader = link.reader().map_err(|e| Error::Tool {
            tool: "control port".into(),
            detail: e.to_string(),
        })?;
        Ok(Client {
            link,
            lines: BufReader::new(reader),
            next_id: 1,
            events: Vec::new(),
        })
    }

    /// Sends a raw line (anything, for tests of bad requests).
    pub fn send_raw(&mut self, line: &str) -> Result<(), Error> {
        self.link.write_line(line).map_err(|e| Error::Tool {
            tool: "control port".into(),
            detail: e.to_string(),
        })
    }

    /// Reads one line (`None` at the end of the stream).
    pub fn read_line(&mut self) -> Result<Option<String>, Error> {
        let mut buf = Vec::new();
        match self.lines.read_until(b'\n', &mut buf) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(String::from_utf8_lossy(&buf).trim_end().to_string())),
            Err(e) => Err(Error::Tool {
                tool: "control port".into(),
                detail: format!("no answer: {e}"),
            }),
        }
    }

    /// Reads lines until a response (a line with `id`); events are kept.
    pub fn response(&mut self) -> Result<(String, Value), Error> {
        loop {
            let Some(line) = self.read_line()? else {
                return Err(Error::Tool {
                    tool: "control port".into(),
                    detail: "closed before the response".into(),
                });
            };
            let Ok(v) = json::parse_limited(line.as_bytes(), 1 << 20) else {
                continue;
            };
            if v.get("event").is_some() {
                self.events.push(v);
            } else if v.get("id").is_some() {
                return Ok((line, v));
            }
        }
    }

    /// Sends `command` and returns its response (the line and its value).
    pub fn request(&mut self, command: &Command) -> Result<(String, Value), Error> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(&control::request_line(id, command))?;
        loop {
            let (line, v) = self.response()?;
            if v.get("id").and_then(Value::as_num) == Some(id) {
                return Ok((line, v));
            }
        }
    }
}

/// Readable text of a response to `command`.
pub fn readable(command: &Command, v: &Value) -> String {
    if v.get("ok") != Some(&Value::Bool(true)) {
        return format!(
            "error: {}",
            v.get("error").and_then(Value::as_str).unwrap_or("?")
        );
    }
    let r = v.get("result").cloned().unwrap_or(Value::Null);
    let num = |k: &str| r.get(k).and_then(Value::as_num).unwrap_or(0);
    match command {
        Command::List => {
            let rows: Vec<Vec<String>> = match r.get("vms") {
                Some(Value::Arr(vms)) => vms.iter().map(control::list_row).collect(),
                _ => Vec::new(),
            };
            control::table(&control::LIST_HEADER, &rows)
        }
        Command::Pool => {
            let mut out = format!(
                "memory: {} MiB free, {} MiB used ({} of {} frames free), largest free block {} MiB, VMs hold {} MiB",
                num("free_mib"),
                num("used_mib"),
                num("free_frames"),
                num("total_frames"),
                num("largest_free_mib"),
                num("vm_memory_mib")
            );
            if let Some(Value::Arr(cpus)) = r.get("cpus") {
                let rows: Vec<Vec<String>> = cpus
                    .iter()
                    .map(|c| {
                        let vms: Vec<&str> = match c.get("vms") {
                            Some(Value::Arr(v)) => v.iter().filter_map(Value::as_str).collect(),
                            _ => Vec::new(),
                        };
                        vec![
                            format!("{}", c.get("cpu").and_then(Value::as_num).unwrap_or(0)),
                            if vms.is_empty() {
                                "-".into()
                            } else {
                                vms.join(", ")
                            },
                        ]
                    })
                    .collect();
                out.push('\n');
                out.push_str(&control::table(&["CPU", "VMS"], &rows));
            }
            out
        }
        Command::Info(_) => {
            let mut rows = Vec::new();
            if let Value::Obj(members) = &r {
                for (k, val) in members {
                    let shown = match val {
                        Value::Str(s) => s.clone(),
                        Value::Num(n) => n.to_string(),
                        Value::Null => "-".into(),
                        Value::Arr(a) => a
                            .iter()
                            .filter_map(Value::as_num)
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        Value::Obj(o) => o
                            .iter()
                            .map(|(k, v)| format!("{k}={}", v.as_num().unwrap_or(0)))
                            .collect::<Vec<_>>()
                            .join(" "),
                        Value::Bool(b) => b.to_string(),
                    };
                    rows.push(vec![k.clone(), shown]);
                }
            }
            control::table(&["FIELD", "VALUE"], &rows)
        }
        Command::Version => format!("control protocol {}", num("protocol")),
        other => {
            let vm = r
                .get("vm")
                .and_then(Value::as_str)
                .map(|n| format!(" vm {n}"))
                .unwrap_or_default();
            let id = r
                .get("vm_id")
                .and_then(Value::as_num)
                .map(|n| format!(" (id {n})"))
                .unwrap_or_default();
            format!("ok: {}{vm}{id}", other.name())
        }
    }
}

/// Runs `boot ctl`; returns the exit status.
pub fn run(opts: &CtlOptions) -> Result<u8, Error> {
    let mut client = Client::connect(&opts.target, opts.timeout)?;
    if opts.words.len() == 1 && opts.words[0] == "watch" {
        // Events until the port closes (or Ctrl-C); no read timeout.
        if let Link::Unix(s) = &client.link {
            let _ = s.set_read_timeout(None);
        }
        while let Some(line) = client.read_line()? {
            if opts.json {
                println!("{line}");
            } else if let Ok(v) = json::parse_limited(line.as_bytes(), 1 << 20) {
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                println!("{:<10} {} {}", s("event"), s("vm"), s("reason"));
            }
        }
        return Ok(0);
    }
    let command = control::parse_words(&opts.words.join(" ")).map_err(Error::Usage)?;
    let (line, v) = client.request(&command)?;
    if opts.json {
        println!("{line}");
    } else {
        println!("{}", readable(&command, &v));
    }
    Ok(if v.get("ok") == Some(&Value::Bool(true)) {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a("--socket /tmp/x --json list")).unwrap();
        assert_eq!(
            (o.target, o.json, o.words),
            (
                Target::Socket("/tmp/x".into()),
                true,
                vec!["list".to_string()]
            )
        );
        let o = parse_args(&a("--tcp 127.0.0.1:5 create a image=hello memory=2")).unwrap();
        assert_eq!(o.target, Target::Tcp("127.0.0.1:5".into()));
        assert_eq!(o.words.len(), 4);
        assert!(parse_args(&a("--json")).is_err());
        assert!(parse_args(&a("--timeout 0 list")).is_err());
        assert!(parse_args(&a("--socket")).is_err());
    }

    #[test]
    fn readable_responses() {
        let v = json::parse(br#"{"id":1,"ok":true,"result":{"vms":[{"vm_id":0,"name":"a","state":"running","cpus":[0],"memory_mib":2,"uptime_ms":10,"exits_per_s":3,"cpu_permille":5}]}}"#).unwrap();
        let t = readable(&Command::List, &v);
        assert!(t.contains("NAME") && t.contains("running"), "{t}");
        let e = json::parse(br#"{"id":2,"ok":false,"error":"no VM \"x\""}"#).unwrap();
        assert_eq!(readable(&Command::Pool, &e), "error: no VM \"x\"");
    }
}
