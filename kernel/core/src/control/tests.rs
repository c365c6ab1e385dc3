use super::*;
use alloc::vec;
use std::string::ToString;

static ELF_BYTES: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    crate::image::minimal_elf(0x10_0000, &[(0x10_0000, &[0x90; 64], 0x1_0000)])
});
const FLAT_BYTES: [u8; 512] = [0xf4; 512];

fn library() -> Vec<ImageInfo<'static>> {
    vec![
        ImageInfo {
            name: "hello",
            kind: ImageKind::Elf,
            data: &ELF_BYTES,
        },
        ImageInfo {
            name: "boot.bin",
            kind: ImageKind::Flat,
            data: &FLAT_BYTES,
        },
    ]
}

fn create(line: &str) -> Result<VmSpec, String> {
    let images = library();
    let limits = CreateLimits {
        images: &images,
        cpu_count: 2,
        largest_free: 64 * MIB,
    };
    let req = match parse_request(line.as_bytes())
        .map_err(|e| e.message)?
        .command
    {
        Command::Create(c) => c,
        other => panic!("not a create: {other:?}"),
    };
    create_spec(&req, &limits, |n| n == "taken")
}

#[test]
fn parses_every_command() {
    let r = parse_request(br#"{"id":5,"cmd":"list"}"#).unwrap();
    assert_eq!(
        r,
        Request {
            id: 5,
            command: Command::List
        }
    );
    let r = parse_request(br#"{"cmd":"stop","vm":"web","id":6}"#).unwrap();
    assert_eq!(r.command, Command::Stop(VmRef::Name("web".into())));
    let r = parse_request(br#"{"id":7,"cmd":"destroy","vm":3}"#).unwrap();
    assert_eq!(r.command, Command::Destroy(VmRef::Id(3)));
    for cmd in COMMANDS {
        let line = match *cmd {
            "create" => {
                r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2}"#.to_string()
            }
            "info" | "start" | "stop" | "restart" | "destroy" | "console" => {
                format!(r#"{{"id":1,"cmd":"{cmd}","vm":"a"}}"#)
            }
            _ => format!(r#"{{"id":1,"cmd":"{cmd}"}}"#),
        };
        let r = parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        assert_eq!(r.command.name(), *cmd);
    }
    let Command::Create(c) = parse_request(br#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":4,"cpus":[1],"slice_us":500}"#).unwrap().command else {
        panic!()
    };
    assert_eq!((c.memory_mib, c.cpus, c.slice_us), (4, vec![1], 500));
}

#[test]
fn bad_requests_name_the_problem() {
    let cases: &[(&str, Option<u64>, &str)] = &[
        ("{", None, "malformed JSON"),
        ("[1]", None, "a request is a JSON object"),
        (r#"{"cmd":"list"}"#, None, "missing field \"id\""),
        (
            r#"{"id":"x","cmd":"list"}"#,
            None,
            "\"id\" must be a number",
        ),
        (r#"{"id":1}"#, Some(1), "missing field \"cmd\""),
        (
            r#"{"id":1,"cmd":"fly"}"#,
            Some(1),
            "unknown command \"fly\"",
        ),
        (
            r#"{"id":1,"cmd":"stop"}"#,
            Some(1),
            "missing field \"vm\" for stop",
        ),
        (
            r#"{"id":1,"cmd":"list","vm":"a"}"#,
            Some(1),
            "unknown field \"vm\" for list",
        ),
        (
            r#"{"id":1,"cmd":"create","name":"a","image":"hello"}"#,
            Some(1),
            "missing field \"memory_mib\"",
        ),
        (
            r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":"2"}"#,
            Some(1),
            "must be a number",
        ),
        (
            r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":99999999}"#,
            Some(1),
            "too large",
        ),
        (
            r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"cpus":"0"}"#,
            Some(1),
            "array of numbers",
        ),
    ];
    for (line, id, needle) in cases {
        let e = parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.id, *id, "{line}");
        assert!(e.message.contains(needle), "{line}: {}", e.message);
    }
    let long_name = format!(
        r#"{{"id":2,"cmd":"info","vm":"{}"}}"#,
        "x".repeat(MAX_STRING + 1)
    );
    assert!(parse_request(long_name.as_bytes())
        .unwrap_err()
        .message
        .contains("too long"));
}

#[test]
fn create_is_validated_like_the_config_file() {
    let spec = create(
        r#"{"id":1,"cmd":"create","name":"web","image":"hello","memory_mib":16,"cpus":[1]}"#,
    )
    .unwrap();
    assert_eq!(
        (spec.memory_bytes, spec.cpus.clone(), spec.image, spec.mode),
        (16 * MIB, vec![1], 0, GuestMode::Long64)
    );
    assert_eq!(spec.slice_us, DEFAULT_SLICE_US);
    let err = |line: &str| create(line).unwrap_err();
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"taken","image":"hello","memory_mib":2}"#)
            .contains("already in use")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"nope","memory_mib":2}"#)
            .contains("no image \"nope\" in the image library (images: hello, boot.bin)")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"boot.bin","memory_mib":2}"#)
            .contains("flat binary")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":3}"#)
            .contains("memory: 3 MiB is not a multiple of 2 MiB")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":0}"#)
            .contains("memory")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a b","image":"hello","memory_mib":2}"#)
            .contains("name")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"cpus":[7]}"#)
            .contains("no such CPU 7 (the machine has 2)")
    );
    assert!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"cpus":[]}"#)
            .contains("no CPU given")
    );
    assert!(err(
        r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"slice_us":0}"#
    )
    .contains("slice"));
    assert!(err(
        r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"cmdline":"x"}"#
    )
    .contains("kernels only"));
    assert_eq!(
        err(r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":128}"#),
        "not enough free memory for 128 MiB (largest block 64 MiB)"
    );
}

#[test]
fn console_words() {
    assert_eq!(parse_words("list"), Ok(Command::List));
    assert_eq!(parse_words("  ls "), Ok(Command::List));
    assert_eq!(parse_words("stats reset"), Ok(Command::StatsReset));
    assert_eq!(
        parse_words("stop web"),
        Ok(Command::Stop(VmRef::Name("web".into())))
    );
    assert_eq!(parse_words("info 3"), Ok(Command::Info(VmRef::Id(3))));
    let Ok(Command::Create(c)) =
        parse_words(r#"create web image=hello memory=8 cpus=0,1 slice=2000 cmdline="a b""#)
    else {
        panic!()
    };
    assert_eq!(
        (
            c.name.as_str(),
            c.memory_mib,
            c.cpus,
            c.slice_us,
            c.cmdline.as_str()
        ),
        ("web", 8, vec![0, 1], 2000, "a b")
    );
    assert!(parse_words("fly").unwrap_err().contains("unknown command"));
    assert!(parse_words("stop")
        .unwrap_err()
        .contains("missing field \"vm\""));
    assert!(parse_words("create a image=hello memory=x")
        .unwrap_err()
        .contains("must be a number"));
    assert!(parse_words("create a \"unterminated").is_err());
    assert!(parse_words("").is_err());
}

#[test]
fn states_allow_what_makes_sense() {
    let vm = VmRef::Id(0);
    assert_eq!(
        check_op(&Command::Stop(vm.clone()), "a", VmState::Stopped),
        Err("vm \"a\" is already stopped".into())
    );
    assert!(check_op(&Command::Stop(vm.clone()), "a", VmState::Running).is_ok());
    assert!(check_op(&Command::Start(vm.clone()), "a", VmState::Running).is_err());
    assert!(check_op(&Command::Start(vm.clone()), "a", VmState::Stopped).is_ok());
    assert!(check_op(&Command::Destroy(vm.clone()), "a", VmState::Stopped).is_ok());
    assert!(check_op(&Command::Console(vm.clone()), "a", VmState::Stopped).is_err());
    assert!(check_op(&Command::Destroy(vm.clone()), "a", VmState::Creating).is_err());
    assert!(check_op(&Command::Info(vm), "a", VmState::Creating).is_ok());
    assert_eq!(free_id([0, 1, 3].into_iter()), 2);
    assert_eq!(free_id([].into_iter()), 0);
}

/// Any line: a request or an error, never a panic; an error with an id
/// keeps the id the line carried.
#[test]
fn fuzz_requests_never_panic() {
    let rounds: u64 = option_env!("HV_FUZZ_ROUNDS")
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let seeds = [
        r#"{"id":1,"cmd":"create","name":"a","image":"hello","memory_mib":2,"cpus":[0],"slice_us":100,"cmdline":""}"#,
        r#"{"id":2,"cmd":"stop","vm":"a"}"#,
        r#"{"id":3,"cmd":"info","vm":12}"#,
    ];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let images = library();
    let limits = CreateLimits {
        images: &images,
        cpu_count: 2,
        largest_free: 64 * MIB,
    };
    for round in 0..rounds {
        let mut doc = seeds[(round % 3) as usize].as_bytes().to_vec();
        for _ in 0..=(next() % 4) {
            let r = next();
            let at = (r as usize >> 8) % (doc.len() + 1);
            match r % 3 {
                0 if at < doc.len() => doc[at] = (r >> 32) as u8,
                1 => doc.insert(at, (r >> 40) as u8),
                _ => doc.truncate(at.max(1)),
            }
        }
        if let Ok(Request {
            command: Command::Create(c),
            ..
        }) = parse_request(&doc)
        {
            let _ = create_spec(&c, &limits, |_| false);
        }
        let _ = parse_words(&String::from_utf8_lossy(&doc));
    }
}

#[test]
fn request_lines_round_trip() {
    for words in [
        "list",
        "info web",
        "stop 3",
        "create a image=hello memory=4 cpus=1 slice=500",
        "pool",
        "stats reset",
        "shutdown",
    ] {
        let cmd = parse_words(words).unwrap();
        let line = request_line(9, &cmd);
        assert_eq!(
            parse_request(line.as_bytes()),
            Ok(Request {
                id: 9,
                command: cmd
            }),
            "{line}"
        );
    }
    let rows = vec![list_row(&json::parse(br#"{"vm_id":1,"name":"a","state":"running","cpus":[0,1],"memory_mib":2,"uptime_ms":1500,"exits_per_s":7,"cpu_permille":125}"#).unwrap())];
    assert_eq!(
        rows[0],
        ["1", "a", "running", "0,1", "2", "1.500", "7", "12.5%"]
    );
    let t = table(&LIST_HEADER, &rows);
    assert_eq!(t.lines().count(), 2);
    assert!(t.starts_with("ID  NAME  STATE    CPUS  MIB  UPTIME_S  EXITS/S  CPU\n1   a     running  0,1   2    1.500     7        12.5%"), "{t}");
}
