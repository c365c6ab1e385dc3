//! The scheduler-overhead samples: the host's time from one slice's end to
//! the next slice's start on a CPU (scheduling, accounting, the lazy
//! register switch), in bench builds only (the kernel's `bench-counts`
//! feature, which `tests/bench.sh` turns on for runs of their own). Taking
//! a sample costs a TSC read and a store at every switch, on the path it
//! measures, so the timed figures (the world switch among them) come from
//! a build without it; in that build every method here is empty.
//!
//! A slice after which something was printed (guest output, a stopped VM's
//! report) gives no sample: printing is not switching; nor does the first
//! slice after an idle sleep: sleeping is not switching either.

#[cfg(feature = "bench-counts")]
pub use counting::SwitchSamples;
#[cfg(not(feature = "bench-counts"))]
pub use plain::SwitchSamples;

#[cfg(not(feature = "bench-counts"))]
mod plain {
    /// No samples in this build.
    pub struct SwitchSamples;

    impl SwitchSamples {
        /// Nothing to keep.
        pub fn new() -> Self {
            SwitchSamples
        }
        /// A slice starts.
        #[inline(always)]
        pub fn slice_starts(&mut self) {}
        /// A slice ended at `_t`, `_printed` after it.
        #[inline(always)]
        pub fn slice_ended(&mut self, _t: u64, _printed: bool) {}
        /// The CPU slept.
        #[inline(always)]
        pub fn slept(&mut self) {}
        /// Prints the summary (nothing in this build).
        pub fn print(self, _cpu: usize) {}
    }
}

#[cfg(feature = "bench-counts")]
mod counting {
    use alloc::vec::Vec;

    /// Samples kept per CPU (later ones are dropped).
    const SAMPLES: usize = 4096;

    /// One CPU's samples, in TSC ticks.
    pub struct SwitchSamples {
        samples: Vec<u64>,
        /// When the last slice ended, if it may give a sample.
        last_end: Option<u64>,
    }

    impl SwitchSamples {
        /// No samples yet.
        pub fn new() -> Self {
            SwitchSamples {
                samples: Vec::with_capacity(SAMPLES),
                last_end: None,
            }
        }
        /// A slice starts now: one sample since the last one's end.
        pub fn slice_starts(&mut self) {
            let start = crate::arch::rdtsc();
            if let Some(end) = self.last_end.take() {
                if self.samples.len() < SAMPLES {
                    self.samples.push(start - end);
                }
            }
        }
        /// A slice ended at TSC `t`; `printed`: something was printed
        /// after it (no sample then).
        pub fn slice_ended(&mut self, t: u64, printed: bool) {
            self.last_end = (!printed).then_some(t);
        }
        /// The CPU slept: the next slice gives no sample.
        pub fn slept(&mut self) {
            self.last_end = None;
        }
        /// Prints the minimum and median (the benchmark's figure).
        pub fn print(mut self, cpu: usize) {
            if self.samples.is_empty() {
                return;
            }
            self.samples.sort_unstable();
            crate::println!(
                "bench: CPU {cpu} scheduler overhead per slice (TSC ticks): min {} median {} over {} slices",
                self.samples[0],
                self.samples[self.samples.len() / 2],
                self.samples.len()
            );
        }
    }
}
