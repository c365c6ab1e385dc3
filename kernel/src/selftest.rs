//! In-kernel test cases, run when the boot package asks for them
//! (`boot run --selftest [FILTER]`), and deliberate crashes (`--crash KIND`).
//!
//! Each case is a plain function returning `Ok(())` or a reason. The runner
//! prints one line per case, `selftest NAME ... ok` or
//! `selftest NAME ... FAILED: REASON`, then `selftest summary: N passed, M
//! failed`; the integration tests (`tests/tests/selftest.rs`) read those lines.
//! A case that faults never returns: the IDT's crash report ends the run with
//! `KernelExit::CpuException`, which the harness treats as a failure too.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use hvcore::frames::{FrameError, PhysRange, FRAME_SIZE};
use hvcore::package::CrashTest;
use hvcore::KernelExit;
use x86_64::structures::paging::PageTableFlags;
use x86_64::VirtAddr;

use crate::acpi::Machine;
use crate::{apic, mm, percpu, println};

/// What a case returns: `Err` carries the reason shown after `FAILED:`.
type CaseResult = Result<(), String>;

/// One registered test case.
struct Case {
    /// Name matched against the filter and printed.
    name: &'static str,
    /// The test.
    run: fn(&Machine) -> CaseResult,
    /// Needs VT-x: on a CPU without it the case is reported `unavailable`
    /// (by name, in the summary too), and the tests check where that is expected.
    needs_vmx: bool,
}

/// The registry, in run order.
const CASES: &[Case] = &[
    Case {
        name: "frames",
        run: frames,
        needs_vmx: false,
    },
    Case {
        name: "heap",
        run: heap,
        needs_vmx: false,
    },
    Case {
        name: "mapper",
        run: mapper,
        needs_vmx: false,
    },
    Case {
        name: "acpi",
        run: acpi,
        needs_vmx: false,
    },
    Case {
        name: "timers",
        run: timers,
        needs_vmx: false,
    },
    Case {
        name: "breakpoint",
        run: breakpoint,
        needs_vmx: false,
    },
    Case {
        name: "vmentry-bad-guest-state",
        run: vmentry_bad_guest_state,
        needs_vmx: true,
    },
    Case {
        name: "vmentry-bad-controls",
        run: vmentry_bad_controls,
        needs_vmx: true,
    },
];

/// Runs the test cases whose names contain `filter` (all when it is empty).
pub fn run(filter: &str, machine: &Machine) -> KernelExit {
    let selected: Vec<&Case> = CASES.iter().filter(|c| c.name.contains(filter)).collect();
    println!(
        "selftest: running {} of {} case(s) (filter {filter:?})",
        selected.len(),
        CASES.len()
    );
    let (mut passed, mut failed, mut unavailable) = (0usize, 0usize, 0usize);
    let vmx = crate::vmm::vtx::enable::detect();
    for case in &selected {
        if let (true, Err(e)) = (case.needs_vmx, &vmx) {
            unavailable += 1;
            println!("selftest {} ... unavailable: {e}", case.name);
            continue;
        }
        match (case.run)(machine) {
            Ok(()) => {
                passed += 1;
                println!("selftest {} ... ok", case.name);
            }
            Err(reason) => {
                failed += 1;
                println!("selftest {} ... FAILED: {reason}", case.name);
            }
        }
    }
    println!("selftest summary: {passed} passed, {failed} failed, {unavailable} unavailable");
    if selected.is_empty() {
        println!("selftest: no case matches {filter:?}");
        return KernelExit::Failure;
    }
    if failed == 0 {
        KernelExit::Success
    } else {
        KernelExit::Failure
    }
}

/// `Err(format!(..))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

// ---------------------------------------------------------------- VM entry

fn vmentry_bad_guest_state(_: &Machine) -> CaseResult {
    let report = crate::vmm::entry_failure_report(crate::vmm::Breakage::GuestState)?;
    println!("selftest vmentry: {report}");
    ensure!(
        report.contains("VM entry failed, reason 0x21"),
        "expected an invalid-guest-state entry failure (reason 33), got: {report}"
    );
    Ok(())
}

fn vmentry_bad_controls(_: &Machine) -> CaseResult {
    let report = crate::vmm::entry_failure_report(crate::vmm::Breakage::Controls)?;
    println!("selftest vmentry: {report}");
    ensure!(
        report.contains("VM-instruction error 7 (VM entry with invalid control field(s))"),
        "expected VM-instruction error 7, got: {report}"
    );
    Ok(())
}

// ---------------------------------------------------------------- frames

fn frames(_: &Machine) -> CaseResult {
    const SINGLES: usize = 256;
    let (free0, total) = mm::counts();
    ensure!(
        free0 > SINGLES + 1024 && total >= free0,
        "implausible counts: {free0} free of {total}"
    );

    // Many single frames: distinct, aligned, counted.
    let mut singles = Vec::with_capacity(SINGLES);
    for i in 0..SINGLES {
        let pa = mm::alloc_frame_zeroed().map_err(|e| format!("single frame #{i}: {e:?}"))?;
        ensure!(pa % FRAME_SIZE == 0, "frame {pa:#x} is not 4 KiB aligned");
        // Tag each frame; a frame handed out twice would lose its first tag.
        write_tag(pa, i as u64);
        singles.push(pa);
    }
    ensure!(
        mm::counts().0 == free0 - SINGLES,
        "free count {} after {SINGLES} allocations from {free0}",
        mm::counts().0
    );
    let mut sorted = singles.clone();
    sorted.sort_unstable();
    sorted.dedup();
    ensure!(
        sorted.len() == SINGLES,
        "{} frame(s) handed out twice",
        SINGLES - sorted.len()
    );
    for (i, &pa) in singles.iter().enumerate() {
        ensure!(
            read_tag(pa) == i as u64,
            "frame {pa:#x} was overwritten (tag {:#x}, expected {i:#x})",
            read_tag(pa)
        );
    }

    // A contiguous run and a 2 MiB aligned block, zeroed, apart from the singles.
    let run = mm::alloc_zeroed(16, 1).map_err(|e| format!("16-frame run: {e:?}"))?;
    ensure!(
        run.frames() == 16 && run.is_frame_aligned(),
        "16-frame run is {run:?}"
    );
    let block = mm::alloc_zeroed(512, 512).map_err(|e| format!("2 MiB block: {e:?}"))?;
    ensure!(block.len() == 2 << 20, "2 MiB block is {block:?}");
    ensure!(
        block.start % (2 << 20) == 0,
        "2 MiB block {block:?} is not 2 MiB aligned"
    );
    ensure!(
        !run.overlaps(&block),
        "run {run:?} overlaps block {block:?}"
    );
    for &pa in &singles {
        let frame = PhysRange::new(pa, pa + FRAME_SIZE);
        ensure!(
            !frame.overlaps(&run) && !frame.overlaps(&block),
            "frame {pa:#x} handed out again in {run:?} or {block:?}"
        );
    }
    ensure!(all_zero(block), "2 MiB block {block:?} is not zeroed");
    ensure!(
        mm::counts().0 == free0 - SINGLES - 16 - 512,
        "free count {} after run and block",
        mm::counts().0
    );

    // Exhaustion is an error, not a hand-out of everything.
    let (free_now, _) = mm::counts();
    match mm::alloc_zeroed(free_now + 1, 1) {
        Err(FrameError::OutOfFrames { .. }) => {}
        other => {
            return Err(format!(
                "asking for {} frames (one more than free): {other:?}",
                free_now + 1
            ))
        }
    }
    match mm::alloc_zeroed(usize::MAX / 2, 1) {
        Err(FrameError::OutOfFrames { .. }) => {}
        other => return Err(format!("asking for an absurd count: {other:?}")),
    }
    match mm::alloc_zeroed(0, 1) {
        Err(FrameError::BadRequest { .. }) => {}
        other => return Err(format!("asking for zero frames: {other:?}")),
    }
    ensure!(
        mm::counts().0 == free_now,
        "failed requests changed the free count ({} -> {})",
        free_now,
        mm::counts().0
    );

    // Everything goes back; a second free is refused.
    for &pa in &singles {
        mm::free(PhysRange::new(pa, pa + FRAME_SIZE))
            .map_err(|e| format!("free {pa:#x}: {e:?}"))?;
    }
    mm::free(run).map_err(|e| format!("free {run:?}: {e:?}"))?;
    mm::free(block).map_err(|e| format!("free {block:?}: {e:?}"))?;
    ensure!(
        mm::counts().0 == free0,
        "free count {} after freeing everything, {free0} before",
        mm::counts().0
    );
    match mm::free(run) {
        Err(FrameError::DoubleFree(_)) => {}
        other => return Err(format!("double free of {run:?}: {other:?}")),
    }
    // The freed block can be had again.
    let again = mm::alloc_zeroed(512, 512).map_err(|e| format!("2 MiB block after free: {e:?}"))?;
    mm::free(again).map_err(|e| format!("free {again:?}: {e:?}"))?;
    Ok(())
}

fn write_tag(pa: u64, tag: u64) {
    let p = mm::phys_to_virt(pa).as_mut_ptr::<u64>();
    // SAFETY: `pa` is a frame this test owns (just allocated), mapped writable
    // through the physical-memory mapping.
    unsafe { p.write_volatile(tag ^ 0x5a5a_0000_0000) };
}

fn read_tag(pa: u64) -> u64 {
    let p = mm::phys_to_virt(pa).as_ptr::<u64>();
    // SAFETY: as in `write_tag`.
    unsafe { p.read_volatile() ^ 0x5a5a_0000_0000 }
}

fn all_zero(range: PhysRange) -> bool {
    let p = mm::phys_to_virt(range.start).as_ptr::<u64>();
    // SAFETY: the range is allocated to the caller and mapped through the
    // physical-memory mapping; u64 alignment holds for frame-aligned ranges.
    let words = unsafe { core::slice::from_raw_parts(p, (range.len() / 8) as usize) };
    words.iter().all(|&w| w == 0)
}

// ---------------------------------------------------------------- heap

fn heap(_: &Machine) -> CaseResult {
    let (mapped0, used0) = mm::heap::usage();

    // A growing Vec keeps its contents across reallocations.
    let mut v: Vec<u64> = Vec::new();
    for i in 0..20_000u64 {
        v.push(i * 3);
    }
    ensure!(
        v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3),
        "Vec contents changed while growing"
    );
    let sum: u64 = v.iter().sum();
    ensure!(sum == 3 * 19_999 * 20_000 / 2, "Vec sum {sum}");
    drop(v);

    // Many small boxes of varying sizes; free every other one, refill, check all.
    let mut boxes: Vec<Box<[u8]>> = Vec::new();
    for i in 0..2000usize {
        let len = 8 + (i * 37) % 500;
        boxes.push(alloc::vec![(i % 251) as u8; len].into_boxed_slice());
    }
    for i in (0..boxes.len()).step_by(2) {
        boxes[i] = alloc::vec![0xeeu8; 3].into_boxed_slice();
    }
    for (i, b) in boxes.iter().enumerate() {
        let ok = if i % 2 == 0 {
            b.len() == 3 && b.iter().all(|&x| x == 0xee)
        } else {
            b.len() == 8 + (i * 37) % 500 && b.iter().all(|&x| x == (i % 251) as u8)
        };
        ensure!(ok, "small allocation #{i} was corrupted");
    }
    drop(boxes);

    // Alignment is honoured.
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let page = Box::new(Page([7; 4096]));
    ensure!(
        (&*page as *const Page as usize).is_multiple_of(4096),
        "Box<Page> is not 4 KiB aligned"
    );
    ensure!(page.0.iter().all(|&x| x == 7), "Box<Page> contents");
    drop(page);

    // 8 MiB in one block is more than the initial heap: it must grow.
    const BIG: usize = 8 << 20;
    let mut big: Vec<u64> = Vec::new();
    big.try_reserve_exact(BIG / 8)
        .map_err(|e| format!("8 MiB allocation failed: {e:?}"))?;
    big.extend((0..BIG as u64 / 8).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let (mapped1, _) = mm::heap::usage();
    ensure!(
        mapped1 >= mapped0 + BIG as u64 / 2 && mapped1 >= BIG as u64,
        "heap did not grow for 8 MiB: {mapped0} -> {mapped1} bytes mapped"
    );
    ensure!(
        big.iter()
            .enumerate()
            .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        "8 MiB block contents changed"
    );
    drop(big);

    let (_, used1) = mm::heap::usage();
    ensure!(
        used1 <= used0 + 4096,
        "heap use {used0} -> {used1} bytes after freeing everything"
    );
    Ok(())
}

// ---------------------------------------------------------------- mapper

fn mapper(_: &Machine) -> CaseResult {
    let region = mm::mapper::free_region().map_err(|e| format!("no free region: {e:?}"))?;
    let va = region + 0x20_1000u64;
    ensure!(
        mm::mapper::translate(va).is_none(),
        "{va:?} is mapped before the test mapped it"
    );
    let frame = mm::alloc_frame_zeroed().map_err(|e| format!("frame: {e:?}"))?;
    let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    mm::mapper::map(va, frame, flags).map_err(|e| format!("map {va:?} -> {frame:#x}: {e:?}"))?;
    ensure!(
        mm::mapper::translate(va) == Some(frame),
        "translate({va:?}) = {:x?}, mapped to {frame:#x}",
        mm::mapper::translate(va)
    );
    ensure!(
        mm::mapper::translate(va + 0x123u64) == Some(frame + 0x123),
        "translate of an offset inside the page: {:x?}",
        mm::mapper::translate(va + 0x123u64)
    );
    match mm::mapper::map(va, frame, flags) {
        Err(mm::mapper::MapError::AlreadyMapped(_)) => {}
        other => return Err(format!("mapping {va:?} twice: {other:?}")),
    }

    // Writes through the new mapping land in the frame, and back.
    let p = va.as_mut_ptr::<u64>();
    let direct = mm::phys_to_virt(frame).as_mut_ptr::<u64>();
    // SAFETY: `va` was just mapped to `frame`, which this test owns; `direct`
    // reaches the same frame through the physical-memory mapping.
    unsafe {
        p.add(5).write_volatile(0x1234_5678_9abc_def0);
        ensure!(
            direct.add(5).read_volatile() == 0x1234_5678_9abc_def0,
            "write through the mapping not seen in the frame"
        );
        direct.add(9).write_volatile(0x0fed_cba9);
        ensure!(
            p.add(9).read_volatile() == 0x0fed_cba9,
            "write to the frame not seen through the mapping"
        );
    }

    let unmapped = mm::mapper::unmap(va).map_err(|e| format!("unmap {va:?}: {e:?}"))?;
    ensure!(
        unmapped == frame,
        "unmap returned {unmapped:#x}, mapped {frame:#x}"
    );
    ensure!(
        mm::mapper::translate(va).is_none(),
        "{va:?} still translates after unmap"
    );
    match mm::mapper::unmap(va) {
        Err(mm::mapper::MapError::NotMapped(_)) => {}
        other => return Err(format!("unmapping {va:?} twice: {other:?}")),
    }
    mm::free(PhysRange::new(frame, frame + FRAME_SIZE))
        .map_err(|e| format!("free frame: {e:?}"))?;
    Ok(())
}

// ---------------------------------------------------------------- ACPI

fn acpi(machine: &Machine) -> CaseResult {
    let cpus = &machine.info.cpus;
    let enabled = machine.enabled_cpus();
    // The harness compares this count with the emulator's CPU count.
    println!("selftest acpi: {} CPUs", enabled.len());
    ensure!(
        !cpus.is_empty(),
        "the MADT lists no CPU (ACPI tables missing?)"
    );
    ensure!(!enabled.is_empty(), "no enabled CPU in the MADT");
    let bsps: Vec<u32> = cpus
        .iter()
        .filter(|c| c.enabled && c.is_bsp)
        .map(|c| c.apic_id)
        .collect();
    ensure!(
        bsps.len() == 1,
        "{} enabled CPUs are marked as the boot CPU: {bsps:?}",
        bsps.len()
    );
    if let Some(me) = percpu::try_current() {
        ensure!(
            bsps[0] == me.apic_id,
            "MADT boot CPU has APIC ID {}, this CPU's local APIC says {}",
            bsps[0],
            me.apic_id
        );
    }
    let mut ids = enabled.clone();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        ids.len() == enabled.len(),
        "APIC IDs repeat among enabled CPUs: {enabled:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- timers

fn timers(_: &Machine) -> CaseResult {
    let tsc = apic::tsc_hz();
    let lapic = apic::timer_hz();
    println!("selftest timers: TSC {tsc} Hz, LAPIC timer {lapic} Hz");
    ensure!(
        (10_000_000..=10_000_000_000).contains(&tsc),
        "TSC at {tsc} Hz is outside 10 MHz..10 GHz"
    );
    ensure!(lapic > 0, "LAPIC timer frequency not calibrated");
    let a = crate::arch::rdtsc();
    let b = crate::arch::rdtsc();
    ensure!(b > a, "TSC does not advance ({a} then {b})");
    Ok(())
}

// ---------------------------------------------------------------- breakpoint

fn breakpoint(_: &Machine) -> CaseResult {
    let cpu = percpu::try_current().ok_or("per-CPU data not installed")?;
    let before = cpu.breakpoints.load(Ordering::Relaxed);
    // SAFETY: the IDT's #BP handler reports and returns to the next instruction.
    unsafe { core::arch::asm!("int3") };
    let after = cpu.breakpoints.load(Ordering::Relaxed);
    ensure!(
        after == before + 1,
        "#BP handler counted {} breakpoint(s) for one int3",
        after.wrapping_sub(before)
    );
    Ok(())
}

// ---------------------------------------------------------------- crashes

/// Candidate lower-half addresses for the page-fault test; the first one the
/// page tables do not map is used.
const UNMAPPED_CANDIDATES: [u64; 4] = [
    0x0dea_dbee_f000,
    0x5555_0000_0000,
    0x7000_0000_0000,
    0x1234_5678_9000,
];

fn unmapped_address() -> Option<u64> {
    UNMAPPED_CANDIDATES
        .into_iter()
        .find(|&a| mm::mapper::translate(VirtAddr::new(a)).is_none())
}

/// Takes a deliberate exception. Page fault and double fault end in the IDT's
/// crash report (`KernelExit::CpuException`); a breakpoint is reported by its
/// handler, which resumes, and then this returns success.
pub fn crash(kind: CrashTest) -> KernelExit {
    match kind {
        CrashTest::PageFault => {
            let Some(addr) = unmapped_address() else {
                println!("crash test: every candidate address is mapped: {UNMAPPED_CANDIDATES:x?}");
                return KernelExit::Failure;
            };
            println!("crash test: page fault: reading unmapped address {addr:#x}");
            // SAFETY: deliberately faults: `addr` is canonical and unmapped
            // (checked above), so the read raises #PF and never returns.
            let value = unsafe { (addr as *const u64).read_volatile() };
            println!("crash test: the read of {addr:#x} returned {value:#x} instead of faulting");
            KernelExit::Failure
        }
        CrashTest::Breakpoint => {
            let before = percpu::try_current().map(|c| c.breakpoints.load(Ordering::Relaxed));
            println!("crash test: breakpoint: executing int3");
            // SAFETY: the #BP handler reports and returns to the next instruction.
            unsafe { core::arch::asm!("int3") };
            let after = percpu::try_current().map(|c| c.breakpoints.load(Ordering::Relaxed));
            match (before, after) {
                (Some(b), Some(a)) if a == b + 1 => {
                    println!("crash test: breakpoint reported and resumed");
                    KernelExit::Success
                }
                _ => {
                    println!(
                        "crash test: breakpoint counter {before:?} -> {after:?}, expected one more"
                    );
                    KernelExit::Failure
                }
            }
        }
        CrashTest::DoubleFault => {
            let Some(stack) = unmapped_address() else {
                println!("crash test: every candidate address is mapped: {UNMAPPED_CANDIDATES:x?}");
                return KernelExit::Failure;
            };
            let stack = stack + 0x1000;
            println!("crash test: double fault: int3 with RSP at unmapped {stack:#x}");
            // SAFETY: deliberately crashes: pushing the #BP frame to the
            // unmapped stack faults, the #PF cannot be pushed either, so the CPU
            // raises #DF, which runs on its own IST stack and ends the run.
            unsafe {
                core::arch::asm!("mov rsp, {0}", "int3", "ud2", in(reg) stack, options(noreturn))
            }
        }
    }
}
