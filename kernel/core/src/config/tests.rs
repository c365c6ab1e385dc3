use super::*;
use alloc::string::ToString;
use alloc::vec;

fn vm(name: &str) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        memory_bytes: 16 * MIB,
        host_base: None,
        cpus: vec![0],
        image: 0,
        slice_us: 10_000,
        entry: None,
        load_addr: None,
        mode: GuestMode::Long64,
        initrd: None,
        cmdline: String::new(),
        on_reboot: RebootPolicy::Stop,
    }
}

/// A 64-bit guest linked like the project's (at 1 MiB, 64 KiB in memory).
static ELF_BYTES: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    image::minimal_elf(0x10_0000, &[(0x10_0000, &[0x90; 64], 0x1_0000)])
});
const FLAT_BYTES: [u8; 512] = [0xf4; 512];

fn elf() -> ImageInfo<'static> {
    ImageInfo {
        name: "counter",
        kind: ImageKind::Elf,
        data: &ELF_BYTES,
    }
}

fn flat() -> ImageInfo<'static> {
    ImageInfo {
        name: "boot.bin",
        kind: ImageKind::Flat,
        data: &FLAT_BYTES,
    }
}

fn machine(cpus: u32, ranges: &[(u64, u64)]) -> MachineLimits {
    MachineLimits {
        cpu_count: Some(cpus),
        memory: Some(MemoryLimits::from_ranges(
            ranges
                .iter()
                .map(|&(start, end)| HostRange { start, end })
                .collect(),
        )),
    }
}

/// The messages of every problem, for compact assertions.
fn messages(vms: &[VmSpec], images: &[ImageInfo<'_>], limits: &MachineLimits) -> Vec<String> {
    match validate(vms, images, limits) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn one(v: VmSpec) -> Vec<String> {
    messages(&[v], &[elf(), flat()], &MachineLimits::UNKNOWN)
}

#[test]
fn default_demo_is_valid() {
    let mut gamma = vm("gamma");
    gamma.cpus = vec![1];
    let vms = [vm("alpha"), vm("beta"), gamma];
    assert_eq!(validate(&vms, &[elf()], &MachineLimits::UNKNOWN), Ok(()));
    assert_eq!(
        validate(&vms, &[elf()], &machine(2, &[(0, 256 * MIB)])),
        Ok(())
    );
}

#[test]
fn no_vms() {
    assert_eq!(
        validate(&[], &[], &MachineLimits::UNKNOWN),
        Err(vec![ConfigError::NoVms])
    );
    assert_eq!(ConfigError::NoVms.to_string(), "no VM is configured");
}

#[test]
fn names() {
    assert_eq!(one(vm("")), ["vm #1: name: must not be empty"]);
    assert_eq!(
        one(vm("we b")),
        ["vm \"we b\": name: character ' ' is not allowed (use letters, digits, '-', '_', '.')"]
    );
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        one(vm(&long))[0],
        alloc::format!(
            "vm \"{}...\": name: 33 bytes is longer than the limit of 32",
            &long[..32]
        )
    );
    assert_eq!(one(vm("a-b_c.9")), Vec::<String>::new());
    assert_eq!(
        messages(
            &[vm("a"), vm("b"), vm("a")],
            &[elf()],
            &MachineLimits::UNKNOWN
        ),
        ["vm \"a\": name: already used by vm #1"]
    );
}

#[test]
fn memory_rules() {
    let mut v = vm("web");
    v.memory_bytes = 3 * MIB;
    assert_eq!(
        one(v.clone()),
        ["vm \"web\": memory: 3 MiB is not a multiple of 2 MiB"]
    );
    v.memory_bytes = 0;
    assert_eq!(one(v.clone()), ["vm \"web\": memory: must not be zero"]);
    v.memory_bytes = MIB;
    assert_eq!(
        one(v.clone()),
        ["vm \"web\": memory: 1 MiB is below the minimum of 2 MiB"]
    );
    v.memory_bytes = 2 * MIB + 1;
    assert_eq!(
        one(v.clone()),
        ["vm \"web\": memory: 2097153 bytes is not a multiple of 2 MiB"]
    );
    v.memory_bytes = 2 * MIB;
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.memory_bytes = 64 * MIB;
    assert_eq!(
        messages(&[v], &[elf()], &machine(1, &[(0, 32 * MIB)])),
        ["vm \"web\": memory: 64 MiB is more than the machine's 32 MiB of usable memory"]
    );
}

#[test]
fn memory_budget_is_greedy_in_table_order() {
    let limits = machine(2, &[(0, 40 * MIB)]);
    let mut broken = vm("broken");
    broken.cpus = vec![7];
    let vms = [vm("a"), broken, vm("b"), vm("c")];
    let verdicts = check_each(&vms, &[elf()], &limits);
    assert!(verdicts[0].is_ok());
    assert!(verdicts[1].is_err(), "a refused VM takes no memory");
    assert!(verdicts[2].is_ok());
    let errors = verdicts[3].clone().unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "vm \"c\": memory: 16 MiB does not fit: the VMs before it already take 32 MiB of 40 MiB usable"
    );
    // Without memory limits there is no budget.
    assert!(check_each(&vms, &[elf()], &MachineLimits::UNKNOWN)[3].is_ok());
}

#[test]
fn host_base_rules() {
    let limits = machine(2, &[(0, 0x1000_0000)]);
    let mut a = vm("a");
    a.memory_bytes = 32 * MIB;
    a.host_base = Some(0x400_0000);
    let mut b = vm("b");
    b.memory_bytes = 32 * MIB;
    b.host_base = Some(0x500_0000);
    assert_eq!(
        messages(&[a.clone(), b.clone()], &[elf()], &limits),
        ["vm \"b\": host_base: host 0x5000000..0x7000000 overlaps vm \"a\" (host 0x4000000..0x6000000)"]
    );
    // Adjacent ranges are fine.
    b.host_base = Some(0x600_0000);
    assert_eq!(
        messages(&[a.clone(), b.clone()], &[elf()], &limits),
        Vec::<String>::new()
    );

    b.host_base = Some(0x600_1000);
    assert_eq!(
        messages(&[a.clone(), b.clone()], &[elf()], &MachineLimits::UNKNOWN),
        ["vm \"b\": host_base: 0x6001000 is not aligned to 2 MiB"]
    );
    b.host_base = Some(0x0fe0_0000);
    assert_eq!(
        messages(&[b.clone()], &[elf()], &limits),
        ["vm \"b\": host_base: host 0xfe00000..0x11e00000 is not inside one usable memory range"]
    );
    b.host_base = Some(u64::MAX - MIB * 2 + 1);
    assert_eq!(
        messages(&[b], &[elf()], &MachineLimits::UNKNOWN),
        ["vm \"b\": host_base: 0xffffffffffe00000 plus the memory size runs past the end of the address space"]
    );
}

#[test]
fn fixed_range_must_sit_in_one_usable_range() {
    let limits = machine(
        1,
        &[
            (0, 0x200_0000),
            (0x200_0000, 0x400_0000),
            (0x800_0000, 0x900_0000),
        ],
    );
    let mut v = vm("v");
    v.memory_bytes = 16 * MIB;
    v.host_base = Some(0x800_0000);
    assert_eq!(
        messages(&[v.clone()], &[elf()], &limits),
        Vec::<String>::new()
    );
    // Spanning two adjacent ranges counts as not inside one: the kernel's memory
    // map merges adjacent usable ranges before building limits.
    v.host_base = Some(0x180_0000);
    assert_eq!(
        messages(&[v], &[elf()], &limits),
        ["vm \"v\": host_base: host 0x1800000..0x2800000 is not inside one usable memory range"]
    );
}

#[test]
fn cpu_rules() {
    let mut b = vm("b");
    b.cpus = vec![0, 5];
    assert_eq!(
        messages(&[b.clone()], &[elf()], &machine(2, &[(0, GIB)])),
        ["vm \"b\": cpus: CPU 5 does not exist (machine has 2)"]
    );
    assert_eq!(
        one(b.clone()),
        Vec::<String>::new(),
        "unknown CPU count: any index below the maximum"
    );
    b.cpus = vec![];
    assert_eq!(one(b.clone()), ["vm \"b\": cpus: no CPU given"]);
    b.cpus = vec![1, 1, 1, 0];
    assert_eq!(
        one(b.clone()),
        ["vm \"b\": cpus: CPU 1 is listed more than once"]
    );
    b.cpus = vec![MAX_CPUS];
    assert_eq!(
        one(b),
        ["vm \"b\": cpus: CPU 256 is beyond the supported maximum of 255"]
    );
}

#[test]
fn image_rules() {
    let mut v = vm("v");
    v.image = 2;
    assert_eq!(
        one(v.clone()),
        ["vm \"v\": image: image #2 does not exist (the package has 2)"]
    );

    v.image = 1;
    assert_eq!(
        one(v.clone()),
        ["vm \"v\": load_addr: a flat image needs a load address"]
    );
    v.load_addr = Some(0x10_0000);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.load_addr = Some(16 * MIB - 256);
    assert_eq!(
        one(v.clone()),
        ["vm \"v\": load_addr: the image at 0xffff00 (512 bytes) ends past the VM's 16 MiB of memory"]
    );
    v.load_addr = Some(u64::MAX);
    assert_eq!(
        one(v.clone()).len(),
        1,
        "overflowing load address is reported, not a panic"
    );

    let big_bytes = vec![0u8; 20 * MIB as usize];
    let big = ImageInfo {
        name: "big",
        kind: ImageKind::Flat,
        data: &big_bytes,
    };
    v.image = 0;
    v.load_addr = Some(0x8000);
    assert_eq!(
        messages(&[v.clone()], &[big], &MachineLimits::UNKNOWN),
        ["vm \"v\": image: the image (20 MiB) is larger than the VM's 16 MiB of memory"]
    );

    assert_eq!(
        messages(&[v], &[elf()], &MachineLimits::UNKNOWN),
        ["vm \"v\": load_addr: only flat images take a load address (ELF images load where their headers say)"]
    );
}

#[test]
fn slice_rules() {
    let mut v = vm("v");
    v.slice_us = 0;
    assert_eq!(one(v.clone()), ["vm \"v\": slice: must not be zero"]);
    v.slice_us = 2_000_000;
    assert_eq!(
        one(v.clone()),
        ["vm \"v\": slice: 2 s is longer than the maximum of 1 s"]
    );
    v.slice_us = MAX_SLICE_US;
    assert_eq!(one(v), Vec::<String>::new());
}

#[test]
fn entry_rules() {
    let mut v = vm("v");
    v.entry = Some(16 * MIB);
    assert_eq!(
        one(v.clone()),
        ["vm \"v\": entry: 0x1000000 is outside the VM's 16 MiB of memory"]
    );
    // Inside memory and inside the image's segment (0x100000..0x110000).
    v.entry = Some(0x10_ffff);
    assert_eq!(one(v), Vec::<String>::new());
}

#[test]
fn real_mode_rules() {
    let mut v = vm("r");
    v.mode = GuestMode::Real16;
    assert_eq!(
        one(v.clone()),
        ["vm \"r\": mode: real16 needs a flat image"]
    );
    v.image = 1;
    v.load_addr = Some(0x7c00);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.entry = Some(0x10_0000);
    assert_eq!(
        one(v.clone()),
        [
            "vm \"r\": entry: 0x100000 is not below 0x100000 (1 MiB): real16 starts at \
          CS:IP with CS = (entry >> 4) & 0xf000, inside the first MiB"
        ]
    );
    // Any entry below 1 MiB runs, wherever the image is.
    v.entry = Some(0xf_ffff);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.entry = None;
    v.load_addr = Some(0x10_0000);
    assert_eq!(
        one(v).len(),
        1,
        "the load address is the entry point when none is given"
    );
    assert_eq!(real_mode_cs_ip(0x7c00), Some((0, 0x7c00)));
    assert_eq!(real_mode_cs_ip(0x1_2345), Some((0x1000, 0x2345)));
    assert_eq!(real_mode_cs_ip(0xf_ffff), Some((0xf000, 0xffff)));
    assert_eq!(real_mode_cs_ip(0), Some((0, 0)));
    assert_eq!(real_mode_cs_ip(REAL_MODE_LIMIT), None);
    for entry in (0..REAL_MODE_LIMIT).step_by(0x3fd) {
        let (cs, ip) = real_mode_cs_ip(entry).unwrap();
        assert_eq!(u64::from(cs) * 16 + u64::from(ip), entry);
    }
}

#[test]
fn real_mode_guest_of_the_project_is_valid() {
    // kernel/guests/realmode.ld: 16-bit code at 0x7c00, packed flat.
    let mut v = vm("realmode");
    v.memory_bytes = 2 * MIB;
    v.mode = GuestMode::Real16;
    v.image = 1;
    v.load_addr = Some(0x7c00);
    assert_eq!(one(v), Vec::<String>::new());
}

#[test]
fn boot_structures_range_is_refused_to_64_bit_images() {
    // An ELF segment at 0x1000 (inside 0x1000..0x8000).
    let low = image::minimal_elf(0x1000, &[(0x1000, &[0x90; 16], 0x100)]);
    let images = [ImageInfo {
        name: "low",
        kind: ImageKind::Elf,
        data: &low,
    }];
    assert_eq!(
        messages(&[vm("v")], &images, &MachineLimits::UNKNOWN),
        ["vm \"v\": image: segment 0x1000..0x1100 overlaps 0x1000..0x8000, where the \
          hypervisor writes a 64-bit guest's GDT and page tables (link the image at 0x8000 or above)"]
    );
    // A flat long64 image over it.
    let mut v = vm("f");
    v.image = 1;
    v.load_addr = Some(0x7f00);
    assert_eq!(
        one(v.clone()),
        [
            "vm \"f\": load_addr: the image at 0x7f00..0x8100 overlaps 0x1000..0x8000, where the \
          hypervisor writes a 64-bit guest's GDT and page tables (load it at 0x8000 or above)"
        ]
    );
    // Just past it, and just below it, are fine.
    v.load_addr = Some(0x8000);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.load_addr = Some(0x0e00);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    // An entry point inside it.
    v.load_addr = Some(0x8000);
    v.entry = Some(0x2000);
    assert_eq!(
        one(v.clone()),
        [
            "vm \"f\": entry: 0x2000 lies in 0x1000..0x8000, where the hypervisor writes a \
          64-bit guest's GDT and page tables"
        ]
    );
    // Real-mode guests get no boot structures: the range is theirs.
    v.mode = GuestMode::Real16;
    v.load_addr = Some(0x1000);
    v.entry = None;
    assert_eq!(one(v), Vec::<String>::new());
    // The project's 64-bit guests, at 1 MiB, are clear of it.
    assert_eq!(one(vm("counter")), Vec::<String>::new());
}

#[test]
fn elf_images_are_checked_by_the_loader() {
    let mut bits32 = ELF_BYTES.clone();
    bits32[4] = 1;
    let no_load = image::minimal_elf(0x10_0000, &[]);
    let high = image::minimal_elf(0x10_0000, &[(0x10_0000, &[1], 1 << 63)]);
    let bad_entry = image::minimal_elf(0x8000, &[(0x10_0000, &[1], 0x1000)]);
    let images = [
        ImageInfo {
            name: "file:x32.elf",
            kind: ImageKind::Elf,
            data: &bits32,
        },
        ImageInfo {
            name: "noload",
            kind: ImageKind::Elf,
            data: &no_load,
        },
        ImageInfo {
            name: "high",
            kind: ImageKind::Elf,
            data: &high,
        },
        ImageInfo {
            name: "entry",
            kind: ImageKind::Elf,
            data: &bad_entry,
        },
        ImageInfo {
            name: "elf4",
            kind: ImageKind::Elf,
            data: b"\x7fELF",
        },
        ImageInfo {
            name: "empty",
            kind: ImageKind::Flat,
            data: &[],
        },
    ];
    let vms: Vec<VmSpec> = (0..images.len())
        .map(|i| {
            let mut v = vm(&alloc::format!("v{i}"));
            v.image = i as u32;
            v.load_addr = (images[i].kind == ImageKind::Flat).then_some(0x10_0000);
            v
        })
        .collect();
    assert_eq!(
        messages(&vms, &images, &MachineLimits::UNKNOWN),
        [
            "vm \"v0\": image: \"file:x32.elf\": a 32-bit ELF (ELFCLASS32); guests must be ELF64",
            "vm \"v1\": image: \"noload\": the ELF image has no PT_LOAD segment to load",
            "vm \"v2\": image: \"high\": segment 0x100000..0x8000000000100000 lies outside the VM's 16 MiB of memory",
            "vm \"v3\": entry: \"entry\": entry point 0x8000 is not inside a loaded segment of the image",
            "vm \"v4\": image: \"elf4\": truncated image: ELF identification lies outside the file",
            "vm \"v5\": image: \"empty\": the image is empty (0 bytes)",
        ]
    );
    // A configured entry point must be inside a segment too; outside memory it
    // is reported once.
    let mut v = vm("e");
    v.entry = Some(0x20_0000);
    assert_eq!(
        one(v.clone()),
        ["vm \"e\": entry: \"counter\": entry point 0x200000 is not inside a loaded segment of the image"]
    );
    v.entry = Some(0x10_0010);
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.entry = Some(GIB);
    assert_eq!(one(v).len(), 1);
}

#[test]
fn names_are_shown_escaped() {
    let mut a = vm("\x1b[2J\x1b[H");
    a.host_base = Some(0x400_0000);
    let mut b = vm("b");
    b.host_base = Some(0x400_0000);
    let shown = messages(&[a, b], &[elf()], &MachineLimits::UNKNOWN);
    assert_eq!(
        shown,
        [
            "vm \"\\x1b[2J\\x1b[H\": name: character '\\u{1b}' is not allowed (use letters, digits, '-', '_', '.')",
            "vm \"b\": host_base: host 0x4000000..0x5000000 overlaps vm \"\\x1b[2J\\x1b[H\" (host 0x4000000..0x5000000)",
        ]
    );
    assert!(shown.iter().all(|m| !m.contains('\x1b')));
    // Over-long names are cut in labels.
    let long = "n".repeat(10_000);
    let shown = one(vm(&long));
    assert_eq!(
        shown,
        [alloc::format!(
            "vm \"{}...\": name: 10000 bytes is longer than the limit of 32",
            &long[..32]
        )]
    );
}

#[test]
fn hostile_tables_are_checked_quickly() {
    // 100,000 CPUs in one list: one problem, at once.
    let mut v = vm("many");
    v.cpus = (0..100_000).collect();
    let start = std::time::Instant::now();
    assert_eq!(
        one(v.clone()),
        ["vm \"many\": cpus: 100000 CPUs listed; there are at most 256 distinct CPUs"]
    );
    v.cpus = vec![7; 100_000];
    assert_eq!(one(v.clone()).len(), 1);
    // A full list of distinct CPUs, and repeats of CPUs beyond the maximum.
    v.cpus = (0..MAX_CPUS).rev().collect();
    assert_eq!(one(v.clone()), Vec::<String>::new());
    v.cpus = vec![300, 300, 300, 1000];
    assert_eq!(
        one(v.clone()),
        [
            "vm \"many\": cpus: CPU 300 is beyond the supported maximum of 255",
            "vm \"many\": cpus: CPU 300 is listed more than once",
            "vm \"many\": cpus: CPU 1000 is beyond the supported maximum of 255",
        ]
    );
    // 20,000 VMs, all with the same name and overlapping fixed memory.
    let mut same = vm("same");
    same.host_base = Some(0x400_0000);
    let vms = vec![same; 20_000];
    let verdicts = check_each(&vms, &[elf()], &MachineLimits::UNKNOWN);
    assert!(verdicts[0].is_ok());
    assert_eq!(verdicts.iter().filter(|v| v.is_err()).count(), 19_999);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn too_many_vms() {
    let vms: Vec<VmSpec> = (0..MAX_VMS + 2)
        .map(|i| vm(&alloc::format!("vm{i}")))
        .collect();
    let errors = messages(&vms, &[elf()], &MachineLimits::UNKNOWN);
    assert_eq!(
        errors,
        [
            "vm \"vm16\": at most 16 VMs can be configured",
            "vm \"vm17\": at most 16 VMs can be configured"
        ]
    );
}

#[test]
fn all_problems_are_collected() {
    let mut bad = vm("");
    bad.memory_bytes = 3 * MIB;
    bad.cpus = vec![];
    bad.image = 9;
    bad.slice_us = 0;
    bad.entry = Some(GIB);
    let errors = validate(&[bad], &[elf()], &MachineLimits::UNKNOWN).unwrap_err();
    let fields: Vec<Option<Field>> = errors
        .iter()
        .map(|e| match e {
            ConfigError::Vm(e) => e.problem.field(),
            ConfigError::NoVms => None,
        })
        .collect();
    assert_eq!(
        fields,
        [
            Some(Field::Name),
            Some(Field::Memory),
            Some(Field::Cpus),
            Some(Field::Slice),
            Some(Field::Entry),
            Some(Field::Image)
        ]
    );
}

#[test]
fn check_each_lets_valid_vms_start() {
    let limits = machine(2, &[(0, GIB)]);
    let mut b = vm("b");
    b.cpus = vec![3];
    let verdicts = check_each(&[vm("a"), b, vm("c")], &[elf()], &limits);
    assert!(verdicts[0].is_ok());
    assert_eq!(verdicts[1].as_ref().unwrap_err()[0].index, 1);
    assert!(verdicts[2].is_ok());
}

#[test]
fn sizes_and_durations_display() {
    assert_eq!(Size(0).to_string(), "0 bytes");
    assert_eq!(Size(1536).to_string(), "1536 bytes");
    assert_eq!(Size(2048).to_string(), "2 KiB");
    assert_eq!(Size(2 * GIB).to_string(), "2 GiB");
    assert_eq!(Micros(10_000).to_string(), "10 ms");
    assert_eq!(Micros(1500).to_string(), "1500 us");
}

#[test]
fn names_of_modes_kinds_and_policies() {
    for m in GuestMode::ALL {
        assert_eq!(GuestMode::from_name(m.name()), Some(m));
        assert_eq!(
            m.kernel_kind().and_then(ImageKind::kernel_mode),
            m.kernel_kind().map(|_| m)
        );
    }
    let names: Vec<&str> = GuestMode::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names, ["long64", "real16", "linux", "protected32"]);
    assert_eq!(GuestMode::from_name("protected"), None);
    assert!(GuestMode::Linux64.is_kernel() && GuestMode::Protected32.is_kernel());
    assert!(!GuestMode::Long64.is_kernel() && !GuestMode::Real16.is_kernel());
    let kinds: Vec<&str> = ImageKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(kinds, ["elf", "flat", "bzimage", "multiboot"]);
    for k in ImageKind::ALL {
        assert_eq!(
            k.kernel_mode().and_then(GuestMode::kernel_kind),
            k.kernel_mode().map(|_| k)
        );
    }
    for p in RebootPolicy::ALL {
        assert_eq!(RebootPolicy::from_name(p.name()), Some(p));
    }
    assert_eq!(RebootPolicy::from_name("reset"), None);
    assert_eq!(RebootPolicy::default(), RebootPolicy::Stop);
    assert_eq!(
        RebootPolicy::default_for(GuestMode::Linux64),
        RebootPolicy::Restart
    );
    assert_eq!(
        RebootPolicy::default_for(GuestMode::Protected32),
        RebootPolicy::Restart
    );
    assert_eq!(
        RebootPolicy::default_for(GuestMode::Long64),
        RebootPolicy::Stop
    );
    assert_eq!(
        RebootPolicy::default_for(GuestMode::Real16),
        RebootPolicy::Stop
    );
}

/// A header of `len` zero bytes with `bytes` written at `at`.
fn synthetic(len: usize, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

/// Multiboot magic, flags and checksum.
fn multiboot_header(flags: u32) -> [u8; 12] {
    let magic = 0x1BAD_B002u32;
    let mut h = [0u8; 12];
    h[..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..].copy_from_slice(&0u32.wrapping_sub(magic).wrapping_sub(flags).to_le_bytes());
    h
}

#[test]
fn detect_recognises_kernels_by_their_headers() {
    use ImageKind::*;
    assert_eq!(ImageKind::detect(b"\x7fELF\x02"), Elf);
    assert_eq!(ImageKind::detect(b"\xeb\x3c"), Flat);
    assert_eq!(ImageKind::detect(&[]), Flat);
    // "HdrS" at 0x202, nothing else: a bzImage (the loader judges the rest).
    let bz = synthetic(0x206, 0x202, b"HdrS");
    assert_eq!(ImageKind::detect(&bz), BzImage);
    assert_eq!(ImageKind::detect_kernel(&bz), Some(BzImage));
    assert_eq!(ImageKind::detect(&bz[..0x205]), Flat, "magic cut short");
    assert_eq!(ImageKind::detect(&synthetic(0x400, 0x203, b"HdrS")), Flat);
    assert_eq!(ImageKind::detect(&synthetic(0x400, 0x202, b"hdrs")), Flat);
    // A Multiboot header anywhere 4-aligned in the first 8 KiB, with its checksum.
    let mb = synthetic(0x2000, 0x1ff4, &multiboot_header(2));
    assert_eq!(ImageKind::detect(&mb), Multiboot);
    assert_eq!(ImageKind::detect_kernel(&mb), Some(Multiboot));
    assert_eq!(
        ImageKind::detect(&synthetic(0x3000, 0x2000, &multiboot_header(2))),
        Flat,
        "past 8 KiB"
    );
    assert_eq!(
        ImageKind::detect(&synthetic(0x100, 0x42, &multiboot_header(2))),
        Flat,
        "unaligned"
    );
    let mut bad_sum = multiboot_header(2);
    bad_sum[8] ^= 1;
    assert_eq!(ImageKind::detect(&synthetic(0x100, 0x40, &bad_sum)), Flat);
    // A header asking for what the loader lacks is still a Multiboot kernel
    // (refused by the loader, with its reason).
    let video = synthetic(0x100, 0x40, &multiboot_header(4));
    assert_eq!(ImageKind::detect(&video), Multiboot);
    // bzImage first: both headers make a bzImage.
    let mut both = synthetic(0x2000, 0x202, b"HdrS");
    both[0x1000..0x100C].copy_from_slice(&multiboot_header(2));
    assert_eq!(ImageKind::detect(&both), BzImage);
    assert_eq!(ImageKind::detect_kernel(&both), Some(BzImage));
    // An ELF with a Multiboot header: an ELF image, a Multiboot kernel.
    let mut elf_mb = synthetic(0x2000, 0, b"\x7fELF\x01\x01\x01");
    elf_mb[0x1000..0x100C].copy_from_slice(&multiboot_header(2));
    assert_eq!(ImageKind::detect(&elf_mb), Elf);
    assert_eq!(ImageKind::detect_kernel(&elf_mb), Some(Multiboot));
    // Neither.
    assert_eq!(ImageKind::detect_kernel(&ELF_BYTES), None);
    assert_eq!(ImageKind::detect_kernel(&FLAT_BYTES), None);
    // The test builders are what they claim.
    assert_eq!(
        ImageKind::detect(&image::minimal_bzimage(0x1000, 0x10_0000)),
        BzImage
    );
    assert_eq!(
        ImageKind::detect(&image::minimal_multiboot(0x10_0000, 0x1000)),
        Multiboot
    );
}

/// A bzImage like Debian's cloud kernel (init_size 51.5 MiB from 16 MiB), a
/// Multiboot kernel at 1 MiB and an initrd, after the ELF and flat images.
static BZ_BYTES: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| image::minimal_bzimage(0x1000, 0x338_0000));
static MB_BYTES: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| image::minimal_multiboot(0x10_0000, 0x1000));
static INITRD_BYTES: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| vec![0x1f; 1_000_000]);
const CMDLINE: &str = "console=ttyS0 acpi=off pci=off reboot=t";

fn kernel_images() -> Vec<ImageInfo<'static>> {
    vec![
        elf(),
        flat(),
        ImageInfo {
            name: "file:vmlinuz",
            kind: ImageKind::BzImage,
            data: &BZ_BYTES,
        },
        ImageInfo {
            name: "file:mboot",
            kind: ImageKind::Multiboot,
            data: &MB_BYTES,
        },
        ImageInfo {
            name: "file:initramfs.cpio.gz",
            kind: ImageKind::Flat,
            data: &INITRD_BYTES,
        },
        ImageInfo {
            name: "file:empty",
            kind: ImageKind::Flat,
            data: &[],
        },
    ]
}

fn linux_vm(name: &str) -> VmSpec {
    VmSpec {
        memory_bytes: 256 * MIB,
        image: 2,
        mode: GuestMode::Linux64,
        initrd: Some(4),
        cmdline: CMDLINE.to_string(),
        on_reboot: RebootPolicy::Restart,
        ..vm(name)
    }
}

fn multiboot_vm(name: &str) -> VmSpec {
    VmSpec {
        image: 3,
        mode: GuestMode::Protected32,
        cmdline: "/boot/kernel debug".to_string(),
        ..vm(name)
    }
}

fn kernel_messages(vms: &[VmSpec]) -> Vec<String> {
    messages(vms, &kernel_images(), &MachineLimits::UNKNOWN)
}

#[test]
fn kernels_pass_their_loaders() {
    let mut no_initrd = linux_vm("bare");
    no_initrd.initrd = None;
    no_initrd.cmdline.clear();
    no_initrd.on_reboot = RebootPolicy::Stop;
    let vms = [
        linux_vm("linux"),
        no_initrd,
        multiboot_vm("mb"),
        vm("counter"),
    ];
    assert_eq!(kernel_messages(&vms), Vec::<String>::new());
    assert_eq!(
        validate(&vms, &kernel_images(), &machine(2, &[(0, GIB)])),
        Ok(())
    );
    // The longest command line the limits allow (the kernel's 2047 bytes; a
    // Multiboot kernel takes MAX_CMDLINE_LEN).
    let mut v = linux_vm("l");
    v.cmdline = "a".repeat(2047);
    let mut m = multiboot_vm("m");
    m.cmdline = "a".repeat(MAX_CMDLINE_LEN);
    assert_eq!(kernel_messages(&[v, m]), Vec::<String>::new());
}

#[test]
fn image_keys_are_refused_for_kernels_and_kernel_keys_for_images() {
    let mut l = linux_vm("l");
    l.entry = Some(0x100_0200);
    l.load_addr = Some(0x100_0000);
    let mut v = vm("v");
    v.initrd = Some(4);
    v.cmdline = "quiet".to_string();
    let mut m = multiboot_vm("m");
    m.initrd = Some(4);
    assert_eq!(
        kernel_messages(&[l, v, m]),
        [
            "vm \"l\": entry: a kernel starts where its boot protocol says (remove entry)",
            "vm \"l\": load_addr: a kernel loads where its boot protocol says (remove load_addr)",
            "vm \"v\": initrd: only a Linux kernel (`kernel = ...`) takes an initrd, not an image",
            "vm \"v\": cmdline: only a kernel (`kernel = ...`) takes a command line, not an image",
            "vm \"m\": initrd: a Multiboot kernel takes no initrd (only a Linux bzImage does)",
        ]
    );
    // An entry outside memory is reported as a kernel key, once.
    let mut l = linux_vm("l");
    l.entry = Some(u64::MAX);
    assert_eq!(
        kernel_messages(&[l]),
        ["vm \"l\": entry: a kernel starts where its boot protocol says (remove entry)"]
    );
}

#[test]
fn kernels_and_images_are_told_apart() {
    let mut not_kernel = linux_vm("l");
    not_kernel.image = 0;
    let mut flat_kernel = multiboot_vm("m");
    flat_kernel.image = 1;
    let mut bz_as_image = vm("v");
    bz_as_image.image = 2;
    let mut mb_as_image = vm("w");
    mb_as_image.image = 3;
    mb_as_image.load_addr = Some(0x10_0000);
    let mut mismatch = linux_vm("x");
    mismatch.image = 3;
    mismatch.initrd = None;
    let mut mismatch32 = multiboot_vm("y");
    mismatch32.image = 2;
    assert_eq!(
        kernel_messages(&[
            not_kernel,
            flat_kernel,
            bz_as_image,
            mb_as_image,
            mismatch,
            mismatch32
        ]),
        [
            "vm \"l\": kernel: \"counter\" is neither a Linux bzImage (\"HdrS\" at 0x202) nor a \
             Multiboot kernel (a Multiboot header in the first 8 KiB)",
            "vm \"m\": kernel: \"boot.bin\" is neither a Linux bzImage (\"HdrS\" at 0x202) nor a \
             Multiboot kernel (a Multiboot header in the first 8 KiB)",
            "vm \"v\": image: \"file:vmlinuz\" is a Linux bzImage: boot it with `kernel = ...` \
             instead of `image = ...`",
            "vm \"w\": image: \"file:mboot\" is a Multiboot kernel: boot it with `kernel = ...` \
             instead of `image = ...`",
            "vm \"x\": mode: linux does not boot a Multiboot kernel",
            "vm \"y\": mode: protected32 does not boot a Linux bzImage",
        ]
    );
}

#[test]
fn missing_and_empty_kernel_files() {
    let mut l = linux_vm("l");
    l.image = 9;
    l.initrd = Some(7);
    let mut e = linux_vm("e");
    e.initrd = Some(5);
    assert_eq!(
        kernel_messages(&[l, e]),
        [
            "vm \"l\": initrd: image #7 does not exist (the package has 6)",
            "vm \"l\": kernel: image #9 does not exist (the package has 6)",
            "vm \"e\": initrd: \"file:empty\": the initrd is empty (0 bytes)",
        ]
    );
    // A kernel in a VM below the minimum memory is judged under memory only.
    let mut tiny = linux_vm("t");
    tiny.memory_bytes = MIB;
    assert_eq!(
        kernel_messages(&[tiny]),
        ["vm \"t\": memory: 1 MiB is below the minimum of 2 MiB"]
    );
}

#[test]
fn command_line_rules() {
    let with = |cmdline: &str| {
        let mut v = linux_vm("l");
        v.cmdline = cmdline.to_string();
        kernel_messages(&[v])
    };
    assert_eq!(
        with("console=ttyS0\tquiet"),
        [
            "vm \"l\": cmdline: character '\\t' at byte 13 is not allowed (no control characters; \
          separate options with spaces)"
        ]
    );
    assert_eq!(
        with("a\0b"),
        [
            "vm \"l\": cmdline: character '\\0' at byte 1 is not allowed (no control characters; \
          separate options with spaces)"
        ]
    );
    assert_eq!(with("x\u{1b}[2J").len(), 1);
    assert_eq!(with("x\u{85}").len(), 1, "C1 controls too");
    assert_eq!(with("init=/bin/sh é"), Vec::<String>::new(), "UTF-8 passes");
    assert_eq!(
        with(&"a".repeat(MAX_CMDLINE_LEN + 1)),
        ["vm \"l\": cmdline: 4096 bytes is longer than the limit of 4095"]
    );
    // The kernel's own limit (cmdline_size 2047), from its loader.
    assert_eq!(
        with(&"a".repeat(2048)),
        ["vm \"l\": cmdline: the command line has 2048 bytes, the kernel accepts at most 2047"]
    );
    // A Multiboot kernel: the same own rules.
    let mut m = multiboot_vm("m");
    m.cmdline = "a".repeat(MAX_CMDLINE_LEN + 1);
    assert_eq!(
        kernel_messages(&[m]),
        ["vm \"m\": cmdline: 4096 bytes is longer than the limit of 4095"]
    );
}

#[test]
fn kernels_are_checked_by_their_loaders() {
    let mut old = BZ_BYTES.clone();
    old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
    let mut no64 = BZ_BYTES.clone();
    no64[0x236] = 0;
    let mut fixed = BZ_BYTES.clone();
    fixed[0x234] = 0; // not relocatable, pref_address 16 MiB: fine
    let mut no_flag = BZ_BYTES.clone();
    no_flag[0x1FE] = 0;
    let low_mb = image::minimal_multiboot(0x2000, 0x1000);
    let video = {
        let mut b = MB_BYTES.clone();
        b[0x44] |= 4;
        b[0x48..0x4C].copy_from_slice(
            &(0u32.wrapping_sub(0x1BAD_B002).wrapping_sub(0x1_0006)).to_le_bytes(),
        );
        b
    };
    let big_initrd = vec![1u8; 16 * MIB as usize];
    let mut images = kernel_images();
    let mut add = |name: &'static str, kind: ImageKind, data: &'static [u8]| {
        images.push(ImageInfo { name, kind, data });
        images.len() as u32 - 1
    };
    // Leaked so the image table can borrow them for the whole test.
    let leak = |v: Vec<u8>| -> &'static [u8] { Vec::leak(v) };
    let old = add("old", ImageKind::BzImage, leak(old));
    let no64 = add("no64", ImageKind::BzImage, leak(no64));
    let fixed = add("fixed", ImageKind::BzImage, leak(fixed));
    let no_flag = add("noflag", ImageKind::BzImage, leak(no_flag));
    let low_mb = add("lowmb", ImageKind::Multiboot, leak(low_mb));
    let video = add("video", ImageKind::Multiboot, leak(video));
    let big = add("file:big-initrd", ImageKind::Flat, leak(big_initrd));
    let linux = |name: &str, image: u32| VmSpec {
        image,
        ..linux_vm(name)
    };
    let mut small = linux("small", 2);
    small.memory_bytes = 64 * MIB;
    let mut tight = linux("tight", 2);
    tight.memory_bytes = 68 * MIB;
    tight.initrd = Some(big);
    let mut tight_ok = tight.clone();
    tight_ok.name = "tight-ok".to_string();
    tight_ok.initrd = Some(4);
    let vms = [
        linux("old", old),
        linux("no64", no64),
        linux("fixed", fixed),
        linux("noflag", no_flag),
        small,
        tight,
        tight_ok,
        VmSpec {
            image: low_mb,
            ..multiboot_vm("lowmb")
        },
        VmSpec {
            image: video,
            ..multiboot_vm("video")
        },
    ];
    assert_eq!(
        messages(&vms, &images, &MachineLimits::UNKNOWN),
        [
            "vm \"old\": kernel: \"old\": boot protocol 2.04 is too old (2.06 or later needed)",
            "vm \"no64\": kernel: \"no64\": the kernel has no 64-bit entry point (protocol 2.15, \
             xloadflags 0x0; XLF_KERNEL_64 needs 2.12+)",
            "vm \"noflag\": kernel: \"noflag\": not a bzImage: no \"HdrS\" magic at 0x202 (found \
             0x53726448) or boot flag 0xaa55 at 0x1fe (found 0xaa00)",
            "vm \"small\": kernel: \"file:vmlinuz\": the kernel needs 0x1000000..0x4380000 (52 MiB \
             from its load address, init_size included) but the VM has 64 MiB of memory",
            "vm \"tight\": initrd: \"file:big-initrd\": the initrd (16777216 bytes) does not fit \
             below 0x4400000 outside the kernel at 0x1000000..0x4380000",
            "vm \"lowmb\": kernel: \"lowmb\": segment 0x2000..0x3000 overlaps the boot structures \
             at 0x1000..0x10000",
            "vm \"video\": kernel: \"video\": the Multiboot header requires features this loader \
             lacks (flags 0x10006, unsupported 0x4; bit 2 is the video mode table)",
        ]
    );
}

#[test]
fn kernel_problems_name_their_fields() {
    let field = |p: Problem| p.field();
    let linux = |e| Problem::KernelInvalid {
        image: String::new(),
        error: KernelError::Linux(e),
    };
    assert_eq!(field(linux(LinuxError::NotLoadedHigh)), Some(Field::Kernel));
    assert_eq!(
        field(linux(LinuxError::InitrdDoesNotFit {
            len: 1,
            limit: 2,
            kernel: (3, 4)
        })),
        Some(Field::Initrd)
    );
    assert_eq!(
        field(linux(LinuxError::CmdlineHasNul { at: 0 })),
        Some(Field::Cmdline)
    );
    let mb = |e| Problem::KernelInvalid {
        image: String::new(),
        error: KernelError::Multiboot(e),
    };
    assert_eq!(field(mb(MultibootError::NoHeader)), Some(Field::Kernel));
    assert_eq!(
        field(mb(MultibootError::CmdlineTooLong { len: 9, max: 8 })),
        Some(Field::Cmdline)
    );
    assert_eq!(
        field(Problem::KernelMissing { index: 0, count: 0 }),
        Some(Field::Kernel)
    );
    assert_eq!(field(Problem::InitrdWithImage), Some(Field::Initrd));
    assert_eq!(field(Problem::CmdlineWithImage), Some(Field::Cmdline));
    assert_eq!(
        field(Problem::KernelModeMismatch {
            mode: GuestMode::Linux64,
            kind: ImageKind::Elf
        }),
        Some(Field::Mode)
    );
    let keys: Vec<&str> = [Field::Kernel, Field::Initrd, Field::Cmdline]
        .iter()
        .map(|f| f.key())
        .collect();
    assert_eq!(keys, ["kernel", "initrd", "cmdline"]);
}

#[test]
fn kernel_images_are_not_loaded_as_images() {
    assert_eq!(
        image::segments(&BZ_BYTES, ImageKind::BzImage, None, GIB),
        Err(ImageError::NotAnImage {
            kind: ImageKind::BzImage
        })
    );
    assert_eq!(
        ImageError::NotAnImage {
            kind: ImageKind::Multiboot
        }
        .to_string(),
        "a Multiboot kernel is booted through its boot protocol, not loaded as an image"
    );
}
