//! Mapping a device window above 4 GiB (a 64-bit PCI BAR the VMM or firmware put there: Cloud
//! Hypervisor always does, SeaBIOS when the 32-bit window overflows) into the boot code's
//! identity map, which covers only the first 4 GiB. 2 MiB pages in one spare page directory
//! (no 1 GiB pages: TCG's CPU models may lack them), uncached.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const FOUR_GIB: u64 = 1 << 32;
const ONE_GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 1 << 21;
/// Present | writable.
const TABLE: u64 = 0x3;
/// Present | writable | write-through | cache-disable | 2 MiB page.
const DEVICE_2M: u64 = 0x9B;
/// Physical-address bits of a table entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Page size bit.
const PS: u64 = 0x80;

#[repr(C, align(4096))]
struct Table([u64; 512]);

/// The spare tables: a page directory for one GiB of device windows, and a PDPT for when that
/// GiB lies above 512 GiB (outside the boot PML4 entry's PDPT).
static mut SPARE_PDPT: Table = Table([0; 512]);
static mut SPARE_PD: Table = Table([0; 512]);
static PDPT_USED: AtomicBool = AtomicBool::new(false);
static PD_USED: AtomicBool = AtomicBool::new(false);
/// The start of the last window mapped above 4 GiB (0: none).
static LAST_HIGH: AtomicU64 = AtomicU64::new(0);

/// The start of the last device window mapped above 4 GiB by [`map_device`], if any.
pub fn last_high_window() -> Option<u64> {
    match LAST_HIGH.load(Ordering::Relaxed) {
        0 => None,
        a => Some(a),
    }
}

fn table_at(entry: u64) -> *mut u64 {
    (entry & ADDR_MASK) as usize as *mut u64
}

/// Identity-map the device window `addr..addr + size` when it lies above 4 GiB; `true` when it
/// is mapped afterwards. `false` below 4 GiB (the boot map covers it: move such a BAR into the
/// machine's window instead), when it is not canonical, spans a 1 GiB boundary, or needs a
/// second spare table.
pub fn map_device(addr: u64, size: u64) -> bool {
    let Some(end) = addr.checked_add(size.max(1)) else {
        return false;
    };
    if addr < FOUR_GIB || end > 1 << 47 || addr / ONE_GIB != (end - 1) / ONE_GIB {
        return false;
    }
    let cr3: u64;
    // SAFETY: reads CR3 (the PML4's address); no memory is touched.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack)) };
    let pml4 = table_at(cr3);
    let (i4, i3) = ((addr >> 39) as usize & 511, (addr >> 30) as usize & 511);
    // SAFETY: single CPU, interrupts off: nothing else walks or edits the page tables. The
    // PML4 (from CR3) and the boot PDPT are in the image's `.bss`, below 4 GiB and
    // identity-mapped; the spare tables are statics handed out once (the flags). Entries are
    // only added where none was present, so no existing translation changes and no TLB entry
    // goes stale (a not-present entry is never cached).
    unsafe {
        let e4 = pml4.add(i4).read_volatile();
        let pdpt = if e4 & 1 == 0 {
            if PDPT_USED.swap(true, Ordering::AcqRel) {
                return false;
            }
            let spare = (&raw mut SPARE_PDPT).cast::<u64>();
            pml4.add(i4).write_volatile(spare as u64 | TABLE);
            spare
        } else {
            table_at(e4)
        };
        let e3 = pdpt.add(i3).read_volatile();
        let pd = if e3 & 1 == 0 {
            if PD_USED.swap(true, Ordering::AcqRel) {
                return false;
            }
            let spare = (&raw mut SPARE_PD).cast::<u64>();
            pdpt.add(i3).write_volatile(spare as u64 | TABLE);
            spare
        } else if e3 & PS != 0 {
            return true; // a 1 GiB page already maps it
        } else {
            table_at(e3)
        };
        let mut page = addr & !(TWO_MIB - 1);
        while page < end {
            let slot = pd.add((page >> 21) as usize & 511);
            if slot.read_volatile() & 1 == 0 {
                slot.write_volatile(page | DEVICE_2M);
            }
            page += TWO_MIB;
        }
    }
    LAST_HIGH.store(addr, Ordering::Relaxed);
    true
}
