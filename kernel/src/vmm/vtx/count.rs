//! VMREAD and VMWRITE counts per exit kind, in bench builds only (the
//! kernel's `bench-counts` feature, which `tests/bench.sh` turns on for a run
//! of its own): counting costs instructions on the path it measures, so the
//! timed figures come from a build without it.
//!
//! Every access between one entry and the next is charged to the exit that
//! was handled in between (its decoding, its handling and the preparation
//! of the next entry); accesses before the first entry of a slice go to
//! "slice start". The vCPU prints the table when it is released.

#[cfg(feature = "bench-counts")]
pub use counting::*;

#[cfg(not(feature = "bench-counts"))]
pub use plain::*;

#[cfg(not(feature = "bench-counts"))]
mod plain {
    use hvcore::stats::ExitKind;

    /// The VMCS type of the exit loop: the hardware's, uncounted.
    pub type Vmcs = vmx::ActiveVmcs;

    /// Wraps the current VMCS (nothing to count here).
    pub fn wrap(vmcs: vmx::ActiveVmcs) -> Vmcs {
        vmcs
    }

    /// The hardware VMCS behind [`Vmcs`].
    pub fn inner(vmcs: &Vmcs) -> &vmx::ActiveVmcs {
        vmcs
    }

    /// Counts of one vCPU (none in this build).
    pub struct Tally;

    impl Tally {
        /// No counts.
        pub fn new() -> Self {
            Tally
        }
        /// An exit of `kind` was decoded.
        #[inline(always)]
        pub fn exit(&mut self, _: ExitKind) {}
        /// Charges the accesses since the last call (before an entry, and
        /// when a slice ends).
        #[inline(always)]
        pub fn settle(&mut self, _: &Vmcs) {}
        /// A new slice starts.
        #[inline(always)]
        pub fn slice_start(&mut self) {}
        /// The world switch writes HOST_RSP (a VMWRITE of its own).
        #[inline(always)]
        pub fn asm_write(&mut self) {}
        /// Prints the table (nothing in this build).
        pub fn print(&self, _: &str) {}
    }
}

#[cfg(feature = "bench-counts")]
mod counting {
    use core::cell::Cell;

    use hvcore::stats::ExitKind;
    use vmx::{VmFail, VmcsAccess};

    /// The current VMCS with every VMREAD and VMWRITE counted.
    pub struct Vmcs {
        inner: vmx::ActiveVmcs,
        reads: Cell<u64>,
        writes: Cell<u64>,
    }

    /// Wraps the current VMCS.
    pub fn wrap(vmcs: vmx::ActiveVmcs) -> Vmcs {
        Vmcs {
            inner: vmcs,
            reads: Cell::new(0),
            writes: Cell::new(0),
        }
    }

    /// The hardware VMCS behind [`Vmcs`].
    pub fn inner(vmcs: &Vmcs) -> &vmx::ActiveVmcs {
        &vmcs.inner
    }

    impl VmcsAccess for Vmcs {
        fn read(&self, encoding: u32) -> Result<u64, VmFail> {
            self.reads.set(self.reads.get() + 1);
            self.inner.read(encoding)
        }
        fn write(&mut self, encoding: u32, value: u64) -> Result<(), VmFail> {
            self.writes.set(self.writes.get() + 1);
            self.inner.write(encoding, value)
        }
        fn read_known(&self, encoding: u32) -> u64 {
            self.reads.set(self.reads.get() + 1);
            self.inner.read_known(encoding)
        }
        fn write_known(&mut self, encoding: u32, value: u64) {
            self.writes.set(self.writes.get() + 1);
            self.inner.write_known(encoding, value)
        }
    }

    /// Buckets: one per exit kind, then "slice start".
    const BUCKETS: usize = ExitKind::COUNT + 1;
    const SLICE_START: usize = ExitKind::COUNT;

    /// Counts of one vCPU: exits, reads and writes per bucket (boxed: the
    /// vCPU stays small).
    pub struct Tally(alloc::boxed::Box<Counts>);

    struct Counts {
        exits: [u64; BUCKETS],
        reads: [u64; BUCKETS],
        writes: [u64; BUCKETS],
        current: usize,
    }

    impl Tally {
        /// No counts yet.
        pub fn new() -> Self {
            Tally(alloc::boxed::Box::new(Counts {
                exits: [0; BUCKETS],
                reads: [0; BUCKETS],
                writes: [0; BUCKETS],
                current: SLICE_START,
            }))
        }

        /// An exit of `kind` was decoded.
        pub fn exit(&mut self, kind: ExitKind) {
            let c = &mut *self.0;
            c.current = kind.index();
            c.exits[c.current] += 1;
        }

        /// Charges the accesses since the last call to the exit being
        /// handled (or to the slice start).
        pub fn settle(&mut self, vmcs: &Vmcs) {
            let c = &mut *self.0;
            c.reads[c.current] += vmcs.reads.replace(0);
            c.writes[c.current] += vmcs.writes.replace(0);
        }

        /// The world switch writes HOST_RSP (a VMWRITE of its own), charged
        /// with the accesses before the entry.
        pub fn asm_write(&mut self) {
            let c = &mut *self.0;
            c.writes[c.current] += 1;
        }

        /// A new slice starts.
        pub fn slice_start(&mut self) {
            let c = &mut *self.0;
            c.current = SLICE_START;
            c.exits[SLICE_START] += 1;
        }

        /// Prints the table: VMREAD and VMWRITE per exit of each kind seen.
        pub fn print(&self, vm: &str) {
            use core::fmt::Write;
            let mut line = alloc::format!("bench: vm {vm} VMREAD/VMWRITE per exit:");
            // Tenths, rounded to the nearest.
            let per = |n: u64, of: u64| ((n * 10 + of / 2) / of.max(1), of);
            let c = &*self.0;
            for (i, &n) in c.exits.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let name = ExitKind::ALL.get(i).map_or("slice-start", |k| k.name());
                let ((r, _), (w, _)) = (per(c.reads[i], n), per(c.writes[i], n));
                let _ = write!(
                    line,
                    " {name} {}.{}/{}.{} ({n})",
                    r / 10,
                    r % 10,
                    w / 10,
                    w % 10
                );
            }
            crate::println!("{line}");
        }
    }
}
