//! Managing VMs at run time (issue 11), driven over QEMU's control socket
//! (COM2) the way `boot ctl` drives it: two VMs created at run time, seen
//! in `list`, one's console output read, stopped, restarted and destroyed
//! with their events in order; every bad request refused with its message
//! and nothing changed; 1,000 create/destroy rounds in one boot return every
//! frame (the free-frame figures are printed).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use boot::ctl::{Client, Target};
use hv_tests::*;
use hvcore::control::json::Value;
use hvcore::control::{parse_words, Command};

const CONFIG: &str = r#"
[[vm]]
name = "hello"
memory = "2M"
cpus = [0]
image = "hello"

[[vm]]
name = "counter"
memory = "4M"
cpus = [1]
image = "counter"
"#;

fn cmd(words: &str) -> Command {
    parse_words(words).unwrap_or_else(|e| panic!("{words}: {e}"))
}

fn ok(client: &mut Client, words: &str) -> Value {
    let (line, v) = client
        .request(&cmd(words))
        .unwrap_or_else(|e| panic!("{words}: {e}"));
    assert_eq!(v.get("ok"), Some(&Value::Bool(true)), "{words}: {line}");
    v.get("result").cloned().unwrap_or(Value::Null)
}

fn refused(client: &mut Client, words: &str, needle: &str) {
    let (line, v) = client
        .request(&cmd(words))
        .unwrap_or_else(|e| panic!("{words}: {e}"));
    assert_eq!(v.get("ok"), Some(&Value::Bool(false)), "{words}: {line}");
    let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
    assert!(msg.contains(needle), "{words}: {msg:?} lacks {needle:?}");
}

fn raw_refused(client: &mut Client, line: &str, needle: &str) {
    client.send_raw(line).unwrap();
    let (got, v) = client.response().unwrap();
    assert_eq!(v.get("ok"), Some(&Value::Bool(false)), "{got}");
    let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
    assert!(msg.contains(needle), "{line:.80}: {msg:?} lacks {needle:?}");
}

/// (name, state) of every VM, and the free frames.
fn snapshot(client: &mut Client) -> (Vec<(String, String)>, u64) {
    let list = ok(client, "list");
    let Some(Value::Arr(vms)) = list.get("vms") else {
        panic!("list: {list:?}")
    };
    let names = vms
        .iter()
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (s("name"), s("state"))
        })
        .collect();
    let pool = ok(client, "pool");
    (
        names,
        pool.get("free_frames").and_then(Value::as_num).unwrap(),
    )
}

fn free_frames(client: &mut Client) -> u64 {
    ok(client, "pool")
        .get("free_frames")
        .and_then(Value::as_num)
        .unwrap()
}

#[test]
fn control_protocol_over_qemu() {
    let name = "control_qemu";
    let mut scenario = vms_scenario(&config_file(name, CONFIG));
    scenario.options.control = true;
    let images = images(name, &scenario);
    let work = work_dir(name).join("qemu-bios");
    let socket = std::env::temp_dir().join(format!("hv-control-{}.sock", std::process::id()));
    let spec = RunSpec {
        emulator: Emulator::Qemu,
        firmware: Firmware::Bios,
        image: images.for_firmware(Firmware::Bios).to_path_buf(),
        memory_mib: MEMORY_MIB,
        cpus: 2,
        cpu: CpuModel::Default,
        gdb: false,
        display: false,
        interactive: false,
        timeout: Some(Duration::from_secs(600)),
        work_dir: work.clone(),
        input: Vec::new(),
        control: Some(socket.clone()),
    };
    let runner = std::thread::spawn(move || boot::run::run(&spec));
    let serial_log = work.join("serial.log");

    // Connect once QEMU listens, then wait for the kernel to answer.
    let start = Instant::now();
    let mut client = loop {
        if let Ok(c) = Client::connect(&Target::Socket(socket.clone()), Duration::from_secs(2)) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the control socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    loop {
        if client.request(&Command::Version).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the kernel never answered on COM2"
        );
    }
    let booted = start.elapsed();

    // Two VMs created at run time, one on each CPU.
    let a = ok(&mut client, "create a1 image=counter memory=4 cpus=0");
    assert_eq!(a.get("cpu").and_then(Value::as_num), Some(0));
    ok(
        &mut client,
        "create b1 image=counter memory=4 cpus=1 slice=5000",
    );
    let (vms, _) = snapshot(&mut client);
    for vm in ["a1", "b1"] {
        assert!(
            vms.contains(&(vm.into(), "running".into())),
            "{vm} not running in {vms:?}"
        );
    }
    // Its console output (COM1, `vm a1: ...`).
    let seen = Instant::now();
    while !std::fs::read_to_string(&serial_log)
        .unwrap_or_default()
        .contains("vm a1: counter starting")
    {
        assert!(
            seen.elapsed() < Duration::from_secs(60),
            "no console output from a1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = ok(&mut client, "info a1");
    assert_eq!(info.get("image").and_then(Value::as_str), Some("counter"));
    assert!(info.get("exits").and_then(Value::as_num).is_some());
    ok(&mut client, "console a1");
    ok(&mut client, "stop a1");
    refused(&mut client, "stop a1", "already stopped");
    ok(&mut client, "restart a1");
    ok(&mut client, "restart b1");
    ok(&mut client, "destroy a1");
    ok(&mut client, "destroy b1");
    let kinds = |vm: &str, client: &Client| -> Vec<String> {
        client
            .events
            .iter()
            .filter(|e| e.get("vm").and_then(Value::as_str) == Some(vm))
            .filter_map(|e| e.get("event").and_then(Value::as_str).map(String::from))
            .collect()
    };
    assert_eq!(
        kinds("a1", &client),
        [
            "created",
            "started",
            "stopped",
            "started",
            "stopped",
            "destroyed"
        ]
    );
    assert_eq!(
        kinds("b1", &client),
        [
            "created",
            "started",
            "stopped",
            "started",
            "stopped",
            "destroyed"
        ]
    );

    // A VM with two vCPUs, one on each CPU: created, listed with both
    // CPUs, destroyed; its memory comes back once its second vCPU (on the
    // other CPU) has ended too.
    let frames = free_frames(&mut client);
    ok(&mut client, "create duo image=counter memory=4 cpus=0,1");
    let list = ok(&mut client, "list");
    let Some(Value::Arr(vms)) = list.get("vms") else {
        panic!("list: {list:?}")
    };
    let duo = vms
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("duo"))
        .unwrap_or_else(|| panic!("duo not listed: {list:?}"));
    assert_eq!(
        duo.get("cpus"),
        Some(&Value::Arr(vec![Value::Num(0), Value::Num(1)])),
        "duo: {duo:?}"
    );
    assert_eq!(duo.get("state").and_then(Value::as_str), Some("running"));
    ok(&mut client, "destroy duo");
    let freed = Instant::now();
    while free_frames(&mut client) != frames {
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "a destroyed two-vCPU VM did not give its memory back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad requests: each named, nothing changed.
    let before = snapshot(&mut client);
    refused(&mut client, "info nope", "no VM \"nope\"");
    refused(&mut client, "destroy 12", "no VM id 12");
    raw_refused(&mut client, "{\"id\":900,\"cmd\":", "malformed JSON");
    raw_refused(
        &mut client,
        &format!(
            "{{\"id\":901,\"cmd\":\"list\",\"x\":\"{}\"}}",
            "y".repeat(5000)
        ),
        "longer than 4096 bytes",
    );
    raw_refused(
        &mut client,
        r#"{"id":902,"cmd":"create","name":"x"}"#,
        "missing field \"image\"",
    );
    raw_refused(
        &mut client,
        &format!(
            r#"{{"id":903,"cmd":"create","name":"{}","image":"hello","memory_mib":2}}"#,
            "n".repeat(300)
        ),
        "too long",
    );
    raw_refused(&mut client, r#"{"id":904,"cmd":"fly"}"#, "unknown command");
    refused(
        &mut client,
        "create counter image=counter memory=4",
        "already in use",
    );
    refused(
        &mut client,
        "create x image=counter memory=3",
        "not a multiple of 2 MiB",
    );
    refused(
        &mut client,
        "create x image=counter memory=2 cpus=5",
        "no such CPU 5 (the machine has 2)",
    );
    refused(
        &mut client,
        "create x image=counter memory=100000",
        "not enough free memory for 100000 MiB (largest block",
    );
    refused(
        &mut client,
        "create x image=nothing memory=2",
        "no image \"nothing\"",
    );
    refused(&mut client, "stop hello", "already stopped");
    let after = snapshot(&mut client);
    assert_eq!(before, after, "a bad request changed the VMs or the pool");

    // 1,000 create/destroy rounds: every frame comes back.
    let frames_start = free_frames(&mut client);
    let loop_start = Instant::now();
    for round in 0..1000 {
        ok(&mut client, "create leak image=hello memory=2 cpus=0");
        let d = ok(&mut client, "destroy leak");
        assert!(d.get("free_frames").is_some(), "round {round}");
    }
    let frames_end = free_frames(&mut client);
    eprintln!(
        "==> [{name}] 1000 create/destroy rounds in {:.1} s: free frames at start {frames_start}, at end {frames_end}, leaked {}",
        loop_start.elapsed().as_secs_f64(),
        frames_start as i64 - frames_end as i64
    );
    assert_eq!(
        frames_start, frames_end,
        "frames leaked over 1000 create/destroy rounds"
    );

    ok(&mut client, "shutdown");
    let outcome = runner.join().unwrap().unwrap();
    eprintln!(
        "==> [{name}] kernel answered {:.1} s after start; {}",
        booted.as_secs_f64(),
        outcome.ending
    );
    assert_success(&outcome);
    assert_kernel_line(&outcome, "control: protocol 1 on COM2");
    assert_kernel_line(&outcome, "console: attached to vm a1");
    assert_kernel_line(&outcome, "control: shutdown requested");
    assert_guest_line(&outcome, "b1", "counter starting");
    let _ = std::fs::remove_file(&socket);
}
