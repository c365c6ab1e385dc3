//! GDT and TSS with separate IST stacks for the exceptions that must run on a
//! known-good stack (SDM Vol. 3A 6.14.5, "Interrupt Stack Table").
//!
//! One GDT+TSS per CPU: the boot CPU uses the static set here; application
//! processors get theirs from [`PerCpuTables::new_leaked`].

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST index (0-based, as `set_stack_index` takes it) for #DF.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST index for NMI.
pub const NMI_IST: u16 = 1;
/// IST index for #MC.
pub const MACHINE_CHECK_IST: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// Selectors the host state of every VMCS also uses.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    /// 64-bit kernel code.
    pub code: SegmentSelector,
    /// Kernel data (SS, DS, ES).
    pub data: SegmentSelector,
    /// The TSS.
    pub tss: SegmentSelector,
}

/// One CPU's descriptor tables.
pub struct PerCpuTables {
    gdt: GlobalDescriptorTable,
    tss: TaskStateSegment,
    selectors: Selectors,
}

impl PerCpuTables {
    /// Allocates a TSS with fresh IST stacks and a GDT referring to it. Leaked:
    /// descriptor tables live as long as the CPU.
    pub fn new_leaked() -> &'static mut PerCpuTables {
        let tables = Box::leak(Box::new(PerCpuTables {
            gdt: GlobalDescriptorTable::new(),
            tss: TaskStateSegment::new(),
            selectors: Selectors {
                code: SegmentSelector(0),
                data: SegmentSelector(0),
                tss: SegmentSelector(0),
            },
        }));
        for ist in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST] {
            let stack: &'static mut [u8] =
                Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
            let top = VirtAddr::from_ptr(stack.as_ptr_range().end);
            // Stacks grow down; keep the top 16-byte aligned (SDM 6.14.2).
            tables.tss.interrupt_stack_table[ist as usize] = top.align_down(16u64);
        }
        let tss: &'static TaskStateSegment = {
            let ptr: *const TaskStateSegment = &tables.tss;
            // SAFETY: `tables` is leaked (never freed or moved), so the TSS it
            // holds is valid for 'static; the GDT only stores its address.
            unsafe { &*ptr }
        };
        let code = tables.gdt.append(Descriptor::kernel_code_segment());
        let data = tables.gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = tables.gdt.append(Descriptor::tss_segment(tss));
        tables.selectors = Selectors {
            code,
            data,
            tss: tss_sel,
        };
        tables
    }

    /// Loads this GDT, the segment registers and the TSS on the calling CPU.
    pub fn load(&'static self) {
        self.gdt.load();
        // SAFETY: the selectors index descriptors of the GDT just loaded, which
        // is 'static; code/data are flat 64-bit kernel segments.
        unsafe {
            CS::set_reg(self.selectors.code);
            SS::set_reg(self.selectors.data);
            DS::set_reg(self.selectors.data);
            ES::set_reg(self.selectors.data);
            load_tss(self.selectors.tss);
        }
    }

    /// The selectors in this GDT.
    pub fn selectors(&self) -> Selectors {
        self.selectors
    }

    /// The TSS (its base goes into the VMCS host state).
    pub fn tss(&self) -> &TaskStateSegment {
        &self.tss
    }
}
