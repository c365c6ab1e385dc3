//! A VM's memory partition: physically contiguous host frames that belong to
//! this VM alone, mapped by its nested page tables (EPT on VT-x, NPT on
//! AMD-V) at guest-physical 0 and nowhere else. Hypervisor memory is never
//! mapped into a guest: the tables map exactly the partition, so any other
//! guest-physical address is an EPT violation or a nested page fault.

use alloc::vec::Vec;

use hvcore::exit::{GuestMemory, GuestMemoryError};
use hvcore::frames::PhysRange;
use vmx::{Ept, EptPermissions, FrameSource, GuestPhysAddr, HostPhysAddr, MemoryType, TableMemory};

use crate::mm;

/// Frames for nested paging structures, remembered so they can be returned.
pub struct TableFrames {
    frames: Vec<u64>,
}

impl TableFrames {
    fn alloc(&mut self) -> Option<u64> {
        let frame = mm::alloc_frame_zeroed().ok()?;
        self.frames.push(frame);
        Some(frame)
    }
}

impl FrameSource for TableFrames {
    fn alloc_zeroed_frame(&mut self) -> Option<HostPhysAddr> {
        self.alloc().map(HostPhysAddr::new)
    }
}

impl svm::FrameSource for TableFrames {
    fn alloc_zeroed_frame(&mut self) -> Option<svm::HostPhysAddr> {
        self.alloc().map(svm::HostPhysAddr::new)
    }
}

/// Nested paging tables reached through the kernel's physical-memory mapping.
pub struct PhysTables;

impl PhysTables {
    fn table(frame: u64) -> *mut [u64; 512] {
        mm::phys_to_virt(frame).as_mut_ptr::<[u64; 512]>()
    }
}

// SAFETY: every frame handed in comes from `TableFrames`, i.e. from the frame
// allocator, which gives it to this VM's tables alone; the physical-memory
// mapping makes `phys_to_virt(frame)` exactly those 4096 bytes (what the CPU
// walks), and distinct frames map to distinct, non-overlapping addresses.
unsafe impl TableMemory for PhysTables {
    fn table(&self, frame: HostPhysAddr) -> &[u64; 512] {
        // SAFETY: see the impl's SAFETY comment.
        unsafe { &*Self::table(frame.as_u64()) }
    }

    fn table_mut(&mut self, frame: HostPhysAddr) -> &mut [u64; 512] {
        // SAFETY: see the impl's SAFETY comment; `&mut self` makes it unique.
        unsafe { &mut *Self::table(frame.as_u64()) }
    }
}

// SAFETY: as for the EPT implementation above.
unsafe impl svm::TableMemory for PhysTables {
    fn table(&self, frame: svm::HostPhysAddr) -> &[u64; 512] {
        // SAFETY: see the impl's SAFETY comment.
        unsafe { &*Self::table(frame.as_u64()) }
    }

    fn table_mut(&mut self, frame: svm::HostPhysAddr) -> &mut [u64; 512] {
        // SAFETY: see the impl's SAFETY comment; `&mut self` makes it unique.
        unsafe { &mut *Self::table(frame.as_u64()) }
    }
}

/// Which nested paging format a partition is mapped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TablesKind {
    /// Intel EPT (SDM 29.3).
    Ept,
    /// AMD nested page tables (APM 15.25).
    Npt,
}

/// A partition's nested page tables.
pub enum NestedTables {
    /// VT-x.
    Ept(Ept<TableFrames, PhysTables>),
    /// AMD-V.
    Npt(svm::Npt<TableFrames, PhysTables>),
}

impl NestedTables {
    /// Every mapping as (host-physical start, bytes).
    pub fn walk(&self, mut f: impl FnMut(u64, u64)) {
        match self {
            NestedTables::Ept(ept) => ept.walk(|m| f(m.hpa.as_u64(), m.size.bytes())),
            NestedTables::Npt(npt) => npt.walk(|m| f(m.hpa.as_u64(), m.size.bytes())),
        }
    }

    /// The EPT pointer (VT-x).
    pub fn eptp(&self) -> Option<u64> {
        match self {
            NestedTables::Ept(ept) => Some(ept.eptp().as_u64()),
            NestedTables::Npt(_) => None,
        }
    }

    /// The nested CR3 (AMD-V).
    pub fn n_cr3(&self) -> Option<u64> {
        match self {
            NestedTables::Npt(npt) => Some(npt.n_cr3().as_u64()),
            NestedTables::Ept(_) => None,
        }
    }

    fn into_frames(self) -> TableFrames {
        match self {
            NestedTables::Ept(ept) => ept.into_parts().0,
            NestedTables::Npt(npt) => npt.into_parts().0,
        }
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
    /// Building the NPT failed.
    Npt(svm::NptError),
}

impl core::fmt::Display for PartitionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory { bytes } => write!(
                f,
                "no {} MiB of free contiguous memory for the partition",
                bytes >> 20
            ),
            Self::HostBaseTaken { base } => {
                write!(f, "host_base {base:#x}: the memory is not free RAM")
            }
            Self::Ept(e) => write!(f, "EPT: {e:?}"),
            Self::Npt(e) => write!(f, "nested page tables: {e:?}"),
        }
    }
}

/// A VM's memory and its nested page tables.
pub struct Partition {
    /// Host-physical memory of the VM (guest-physical 0 maps to `host.start`).
    pub host: PhysRange,
    /// The VM's EPT or NPT.
    pub tables: NestedTables,
}

impl Partition {
    /// Allocates `bytes` (a multiple of 2 MiB) of 2 MiB-aligned memory, or
    /// reserves it at `host_base`, and maps it RWX write-back at guest 0.
    pub fn new(
        bytes: u64,
        host_base: Option<u64>,
        kind: TablesKind,
    ) -> Result<Partition, PartitionError> {
        let frames = (bytes / 4096) as usize;
        let host = match host_base {
            Some(base) => {
                let range = PhysRange::new(base, base + bytes);
                mm::reserve(range).map_err(|_| PartitionError::HostBaseTaken { base })?;
                zero(range);
                range
            }
            None => {
                mm::alloc_zeroed(frames, 512).map_err(|_| PartitionError::OutOfMemory { bytes })?
            }
        };
        let built = match kind {
            TablesKind::Ept => Ept::new(TableFrames { frames: Vec::new() }, PhysTables)
                .and_then(|mut ept| {
                    ept.map_range(
                        GuestPhysAddr::new(0),
                        HostPhysAddr::new(host.start),
                        bytes,
                        EptPermissions::RWX,
                        MemoryType::WriteBack,
                    )?;
                    Ok(NestedTables::Ept(ept))
                })
                .map_err(PartitionError::Ept),
            TablesKind::Npt => svm::Npt::new(TableFrames { frames: Vec::new() }, PhysTables)
                .and_then(|mut npt| {
                    npt.map_range(
                        svm::GuestPhysAddr::new(0),
                        svm::HostPhysAddr::new(host.start),
                        bytes,
                        svm::NptPermissions::RWX,
                        svm::CacheType::WriteBack,
                    )?;
                    Ok(NestedTables::Npt(npt))
                })
                .map_err(PartitionError::Npt),
        };
        match built {
            Ok(tables) => Ok(Partition { host, tables }),
            Err(e) => {
                let _ = mm::free(host);
                Err(e)
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

    /// Returns the partition's memory and table frames to the allocator.
    pub fn release(self) {
        for f in self.tables.into_frames().frames {
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
