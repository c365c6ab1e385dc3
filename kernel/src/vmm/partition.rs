//! A VM's memory partition: physically contiguous host frames that belong to
//! this VM alone, mapped by its EPT at guest-physical 0 and nowhere else.
//! Hypervisor memory is never mapped into a guest: the EPT maps exactly the
//! partition, so any other guest-physical address is an EPT violation.

use alloc::vec::Vec;

use hvcore::exit::{GuestMemory, GuestMemoryError};
use hvcore::frames::PhysRange;
use vmx::{Ept, EptPermissions, FrameSource, GuestPhysAddr, HostPhysAddr, MemoryType, TableMemory};

use crate::mm;

/// Frames for EPT paging structures, remembered so they can be returned.
pub struct EptFrames {
    frames: Vec<u64>,
}

impl FrameSource for EptFrames {
    fn alloc_zeroed_frame(&mut self) -> Option<HostPhysAddr> {
        let frame = mm::alloc_frame_zeroed().ok()?;
        self.frames.push(frame);
        Some(HostPhysAddr::new(frame))
    }
}

/// EPT tables reached through the kernel's physical-memory mapping.
pub struct PhysTables;

// SAFETY: every frame handed in comes from `EptFrames`, i.e. from the frame
// allocator, which gives it to this EPT alone; the physical-memory mapping
// makes `phys_to_virt(frame)` exactly those 4096 bytes (what the CPU walks),
// and distinct frames map to distinct, non-overlapping addresses.
unsafe impl TableMemory for PhysTables {
    fn table(&self, frame: HostPhysAddr) -> &[u64; 512] {
        let ptr = mm::phys_to_virt(frame.as_u64()).as_ptr::<[u64; 512]>();
        // SAFETY: see the impl's SAFETY comment.
        unsafe { &*ptr }
    }

    fn table_mut(&mut self, frame: HostPhysAddr) -> &mut [u64; 512] {
        let ptr = mm::phys_to_virt(frame.as_u64()).as_mut_ptr::<[u64; 512]>();
        // SAFETY: see the impl's SAFETY comment; `&mut self` makes it unique.
        unsafe { &mut *ptr }
    }
}

/// Why a partition could not be built.
#[derive(Debug)]
pub enum PartitionError {
    /// Not enough free contiguous memory.
    OutOfMemory {
        /// Bytes asked for.
        bytes: u64,
    },
    /// The configured host placement is not free RAM.
    HostBaseTaken {
        /// Configured host base.
        base: u64,
    },
    /// Building the EPT failed.
    Ept(vmx::EptError),
}

impl core::fmt::Display for PartitionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory { bytes } => write!(f, "no {} MiB of free contiguous memory for the partition", bytes >> 20),
            Self::HostBaseTaken { base } => write!(f, "host_base {base:#x}: the memory is not free RAM"),
            Self::Ept(e) => write!(f, "EPT: {e:?}"),
        }
    }
}

/// A VM's memory and its EPT.
pub struct Partition {
    /// Host-physical memory of the VM (guest-physical 0 maps to `host.start`).
    pub host: PhysRange,
    /// The VM's EPT.
    pub ept: Ept<EptFrames, PhysTables>,
}

impl Partition {
    /// Allocates `bytes` (a multiple of 2 MiB) of 2 MiB-aligned memory, or
    /// reserves it at `host_base`, and maps it RWX write-back at guest 0.
    pub fn new(bytes: u64, host_base: Option<u64>) -> Result<Partition, PartitionError> {
        let frames = (bytes / 4096) as usize;
        let host = match host_base {
            Some(base) => {
                let range = PhysRange::new(base, base + bytes);
                mm::reserve(range).map_err(|_| PartitionError::HostBaseTaken { base })?;
                zero(range);
                range
            }
            None => mm::alloc_zeroed(frames, 512).map_err(|_| PartitionError::OutOfMemory { bytes })?,
        };
        let built = Ept::new(EptFrames { frames: Vec::new() }, PhysTables).and_then(|mut ept| {
            ept.map_range(
                GuestPhysAddr::new(0),
                HostPhysAddr::new(host.start),
                bytes,
                EptPermissions::RWX,
                MemoryType::WriteBack,
            )?;
            Ok(ept)
        });
        match built {
            Ok(ept) => Ok(Partition { host, ept }),
            Err(e) => {
                let _ = mm::free(host);
                Err(PartitionError::Ept(e))
            }
        }
    }

    /// Guest memory size in bytes.
    pub fn size(&self) -> u64 {
        self.host.len()
    }

    /// The bytes at guest-physical `gpa`, if the whole range is inside the VM.
    pub fn slice_mut(&mut self, gpa: u64, len: u64) -> Option<&mut [u8]> {
        let end = gpa.checked_add(len)?;
        if end > self.size() {
            return None;
        }
        let ptr = mm::phys_to_virt(self.host.start + gpa).as_mut_ptr::<u8>();
        // SAFETY: [gpa, gpa+len) lies inside this VM's partition (checked),
        // which the frame allocator gave to this VM alone, mapped through the
        // physical-memory window; `&mut self` keeps the borrow unique.
        Some(unsafe { core::slice::from_raw_parts_mut(ptr, len as usize) })
    }

    /// Returns the partition's memory and EPT frames to the allocator.
    pub fn release(self) {
        let (frames, _, _) = self.ept.into_parts();
        for f in frames.frames {
            let _ = mm::free(PhysRange::new(f, f + 4096));
        }
        let _ = mm::free(self.host);
    }
}

fn zero(range: PhysRange) {
    let ptr = mm::phys_to_virt(range.start).as_mut_ptr::<u8>();
    // SAFETY: the range was just reserved for this partition alone.
    unsafe { core::ptr::write_bytes(ptr, 0, range.len() as usize) };
}

impl GuestMemory for Partition {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let size = self.size();
        match gpa.checked_add(buf.len() as u64) {
            Some(end) if end <= size => {}
            _ => return Err(GuestMemoryError::OutOfRange { gpa: gpa.max(size) }),
        }
        let ptr = mm::phys_to_virt(self.host.start + gpa).as_ptr::<u8>();
        // SAFETY: the range lies inside this VM's partition (checked above);
        // a guest may change it concurrently only on its own vCPU, which is
        // not running while its exit is handled.
        unsafe { core::ptr::copy_nonoverlapping(ptr, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}
