//! Idle: sleep until a deadline of the generic timer.
//!
//! With a GICv2 (`arm,cortex-a15-gic`, QEMU `virt`'s default) or a GICv3 (`arm,gic-v3`: QEMU
//! `virt,gic-version=3`, Firecracker, Cloud Hypervisor) the virtual timer's interrupt is enabled
//! at the distributor (GICv3: the boot CPU's redistributor) and the CPU interface, and `wfi`
//! waits for it: interrupts stay
//! masked in `PSTATE` (nothing is ever taken), but a pending one still ends `wfi`, and turning
//! the timer off again withdraws it (level-triggered, never acknowledged). So the vCPU really
//! sleeps, under TCG too. Without either the generic timer's event
//! stream (`CNTKCTL_EL1.EVNTEN`) wakes `wfe` every ~100 µs until the deadline: a sleep under
//! KVM, a poll under TCG (the agent's loop tolerates polling).

use super::clock::counter;
use super::{dt, read_sysreg};

/// Target period of the event stream, microseconds.
pub const EVENT_PERIOD_US: u64 = 100;
/// The virtual timer's interrupt: PPI 11 (INTID 27), the architecture's recommendation and
/// what the device tree's `arm,armv8-timer` node gives on every VMM here.
const VTIMER_INTID: u32 = 27;

const GICD_CTLR: u64 = 0x000;
const GICD_ISENABLER0: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
const GICC_CTLR: u64 = 0x000;
const GICC_PMR: u64 = 0x004;
/// GICv3 distributor control: affinity routing, group 1 enabled.
const GICD_CTLR_V3: u32 = (1 << 4) | (1 << 1) | 1;
const GICR_WAKER: u64 = 0x014;
/// The redistributor's SGI/PPI frame follows its control frame.
const GICR_SGI_BASE: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x080;
/// Polls of `GICR_WAKER.ChildrenAsleep` before giving up on the redistributor.
const WAKER_POLLS: u32 = 100_000;

/// `CNTV_CTL_EL0`: enabled, interrupt not masked.
const CNTV_ENABLE: u64 = 1;

/// Which interrupt controller wakes `wfi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gic {
    None,
    V2,
    V3,
}

/// The wait.
#[derive(Debug)]
pub struct Idle {
    hz: u64,
    /// The interrupt controller the virtual timer's interrupt is routed through, if any.
    gic: Gic,
}

fn write32(addr: u64, value: u32) {
    // SAFETY: only called with GIC distributor / redistributor / CPU interface registers the
    // device tree names, in the first GiB the boot code maps as device memory.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
}

fn read32(addr: u64) -> u32 {
    // SAFETY: as `write32`; reading these registers has no side effect.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Route the virtual timer's interrupt through the GICv3 the device tree names, if any, and
/// the CPU interface's system registers are there (`ID_AA64PFR0_EL1.GIC`; the boot code let
/// EL1 use them when it came from EL2).
fn gic_v3_setup() -> bool {
    if (read_sysreg!("id_aa64pfr0_el1") >> 24) & 0xF == 0 {
        return false;
    }
    let Some(fdt) = dt::fdt() else { return false };
    let Some(node) = fdt.nodes().find(|n| dt::is_compatible(*n, "arm,gic-v3")) else {
        return false;
    };
    let (Some((dist, _)), Some((rd, _))) = (node.reg(0), node.reg(1)) else {
        return false;
    };
    if dist >= 1 << 30 || rd >= 1 << 30 {
        return false; // outside the device window the boot code maps
    }
    write32(dist + GICD_CTLR, GICD_CTLR_V3);
    // Wake the boot CPU's redistributor (the first one), then its timer PPI: group 1,
    // priority 0, enabled.
    write32(rd + GICR_WAKER, read32(rd + GICR_WAKER) & !(1 << 1));
    let mut polls = 0;
    while read32(rd + GICR_WAKER) & (1 << 2) != 0 {
        polls += 1;
        if polls > WAKER_POLLS {
            return false;
        }
        core::hint::spin_loop();
    }
    let sgi = rd + GICR_SGI_BASE;
    write32(
        sgi + GICR_IGROUPR0,
        read32(sgi + GICR_IGROUPR0) | (1 << VTIMER_INTID),
    );
    write32(sgi + GICD_IPRIORITYR + u64::from(VTIMER_INTID & !3), 0);
    write32(sgi + GICD_ISENABLER0, 1 << VTIMER_INTID);
    // SAFETY: the CPU interface's system registers (present: ID_AA64PFR0_EL1.GIC): system
    // register access on (ICC_SRE_EL1.SRE), priority mask, group 1 on. Interrupts stay masked
    // in PSTATE, so a pending one only ends a `wfi`.
    unsafe {
        core::arch::asm!(
            "mrs {t}, s3_0_c12_c12_5",
            "orr {t}, {t}, #1",
            "msr s3_0_c12_c12_5, {t}",
            "isb",
            "mov {t}, #0xf0",
            "msr s3_0_c4_c6_0, {t}",
            "mov {t}, #1",
            "msr s3_0_c12_c12_7, {t}",
            "isb",
            t = out(reg) _,
            options(nomem, nostack)
        )
    };
    true
}

/// Route the virtual timer's interrupt through the GICv2 the device tree names, if any.
fn gic_v2_setup() -> bool {
    let Some(fdt) = dt::fdt() else { return false };
    let Some(node) = fdt.nodes().find(|n| {
        dt::is_compatible(*n, "arm,cortex-a15-gic") || dt::is_compatible(*n, "arm,gic-400")
    }) else {
        return false;
    };
    let (Some((dist, _)), Some((cpu, _))) = (node.reg(0), node.reg(1)) else {
        return false;
    };
    if dist >= 1 << 30 || cpu >= 1 << 30 {
        return false; // outside the device window the boot code maps
    }
    // Priority 0 (highest) for the timer; every other interrupt stays disabled.
    let priority = dist + GICD_IPRIORITYR + u64::from(VTIMER_INTID & !3);
    write32(priority, 0);
    write32(dist + GICD_ISENABLER0, 1 << VTIMER_INTID);
    write32(dist + GICD_CTLR, 1);
    write32(cpu + GICC_PMR, 0xF0);
    write32(cpu + GICC_CTLR, 1);
    true
}

fn set_cntv(ctl: u64, cval: u64) {
    // SAFETY: the virtual timer's compare value and control only decide when its interrupt is
    // raised; interrupts are masked in PSTATE, so it only ends a `wfi`.
    unsafe {
        core::arch::asm!(
            "msr cntv_cval_el0, {cval}",
            "msr cntv_ctl_el0, {ctl}",
            "isb",
            cval = in(reg) cval,
            ctl = in(reg) ctl,
            options(nomem, nostack)
        )
    };
}

impl Idle {
    /// Set up the wait for a counter of `hz`; `None` when `hz` is 0.
    pub fn init(hz: u64) -> Option<Idle> {
        if hz == 0 {
            return None;
        }
        // An event on every transition of counter bit `n` (0 to 1): period 2^(n+1) ticks.
        let ticks = (hz * EVENT_PERIOD_US / 1_000_000).max(2);
        let n = (63 - ticks.leading_zeros()).saturating_sub(1).min(15);
        let ctl = read_sysreg!("cntkctl_el1");
        let ctl = (ctl & !(0xF << 4)) | (u64::from(n) << 4) | (1 << 2); // EVNTI, EVNTEN
                                                                        // SAFETY: CNTKCTL_EL1 only controls EL0 access to the counters and the event stream;
                                                                        // the stream only wakes `wfe`.
        unsafe {
            core::arch::asm!("msr cntkctl_el1, {}", "isb", in(reg) ctl, options(nomem, nostack))
        };
        set_cntv(0, 0);
        let gic = if gic_v2_setup() {
            Gic::V2
        } else if gic_v3_setup() {
            Gic::V3
        } else {
            Gic::None
        };
        Some(Idle { hz, gic })
    }

    /// How the wait is done, for the console.
    pub fn method(&self) -> &'static str {
        match self.gic {
            Gic::V2 => "wfi until the virtual timer (GICv2)",
            Gic::V3 => "wfi until the virtual timer (GICv3)",
            Gic::None => "wfe on the timer event stream",
        }
    }

    /// Wait until `us` microseconds have passed.
    pub fn nap_us(&self, us: u64) {
        let deadline = counter().saturating_add(us.saturating_mul(self.hz) / 1_000_000);
        if self.gic != Gic::None {
            set_cntv(CNTV_ENABLE, deadline);
        }
        while counter() < deadline {
            if self.gic != Gic::None {
                // SAFETY: `wfi` waits for an interrupt to be pending (the timer's, armed
                // above for the deadline); none is taken, PSTATE masks them.
                unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
            } else {
                // SAFETY: `wfe` only waits for an event (the event stream sends one every
                // EVENT_PERIOD_US at most).
                unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
            }
        }
        if self.gic != Gic::None {
            set_cntv(0, 0); // withdraws the (level) interrupt
        }
    }
}
