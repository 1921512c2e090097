//! kvmclock on a KVM guest (QEMU `-accel kvm`, Firecracker, Cloud Hypervisor): the TSC
//! frequency and the wall time at boot, from the structures KVM fills when the guest gives it
//! their addresses through MSRs ([`crate::pvclock`] parses them). Also CPUID `0x4000_0010`,
//! the TSC frequency some VMMs (Cloud Hypervisor) publish in the hypervisor leaves.

use core::arch::x86_64::__cpuid;

use crate::pvclock::{
    is_kvm_signature, VcpuTime, WallClock, FEATURE_CLOCKSOURCE2, LEAF_FEATURES, LEAF_SIGNATURE,
    LEAF_TIMING, MSR_SYSTEM_TIME_NEW, MSR_WALL_CLOCK_NEW, VCPU_TIME_LEN, WALL_CLOCK_LEN,
};

/// CPUID.1:ECX bit 31: running under a hypervisor (the `0x4000_0000` leaves mean something).
const HYPERVISOR_BIT: u32 = 1 << 31;

#[repr(C, align(64))]
struct Area([u8; 64]);

/// Where KVM writes the vCPU time info (32 bytes, must not cross a page: aligned to 64).
static mut VCPU_TIME: Area = Area([0; 64]);
/// Where KVM writes the wall clock at boot.
static mut WALL_CLOCK: Area = Area([0; 64]);

/// The highest hypervisor leaf, if CPUID says the CPU runs under one.
fn hypervisor_max_leaf() -> Option<(u32, bool)> {
    if __cpuid(1).ecx & HYPERVISOR_BIT == 0 {
        return None;
    }
    let sig = __cpuid(LEAF_SIGNATURE);
    Some((sig.eax, is_kvm_signature(sig.ebx, sig.ecx, sig.edx)))
}

/// The TSC frequency from CPUID `0x4000_0010` (EAX, kHz), where the VMM publishes it.
pub fn cpuid_tsc_hz() -> Option<u64> {
    let (max, _) = hypervisor_max_leaf()?;
    if max < LEAF_TIMING {
        return None;
    }
    let khz = __cpuid(LEAF_TIMING).eax;
    (khz != 0).then(|| u64::from(khz) * 1000)
}

fn read_area<const N: usize>(area: *const Area) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, byte) in b.iter_mut().enumerate() {
        // SAFETY: `area` is one of this module's statics (64 bytes, N <= 64); the hypervisor
        // writes it behind the compiler's back, hence the volatile reads.
        *byte = unsafe { area.cast::<u8>().add(i).read_volatile() };
    }
    b
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: only called with the kvmclock MSRs, which exist when CPUID `0x4000_0001`
    // reports KVM_FEATURE_CLOCKSOURCE2; the value is the physical address (identity map) of a
    // static this module owns, which KVM then writes into.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// kvmclock as read once at boot: the TSC scaling and the wall clock at the VM's start.
#[derive(Clone, Copy)]
pub struct Kvmclock {
    /// The vCPU's TSC → system time scaling.
    pub time: VcpuTime,
    /// The wall clock at system time 0 (`None` if KVM gave none).
    pub wall: Option<WallClock>,
}

impl Kvmclock {
    /// Ask KVM for its clock, if CPUID says this is KVM with the kvmclock MSRs. Once per boot.
    #[inline(never)]
    pub fn init() -> Option<Kvmclock> {
        let (max, kvm) = hypervisor_max_leaf()?;
        if !kvm || max < LEAF_FEATURES || __cpuid(LEAF_FEATURES).eax & FEATURE_CLOCKSOURCE2 == 0 {
            return None;
        }
        let time_area = &raw const VCPU_TIME;
        let wall_area = &raw const WALL_CLOCK;
        wrmsr(MSR_SYSTEM_TIME_NEW, time_area as u64 | 1);
        wrmsr(MSR_WALL_CLOCK_NEW, wall_area as u64);
        // KVM fills both areas before the WRMSRs return (each is an exit to KVM).
        let time = VcpuTime::parse(&read_area::<VCPU_TIME_LEN>(time_area));
        if !time.valid() {
            return None;
        }
        let wall = WallClock::parse(&read_area::<WALL_CLOCK_LEN>(wall_area));
        let wall = wall.unix_s_at(0).is_some().then_some(wall);
        Some(Kvmclock { time, wall })
    }

    /// Unix seconds at TSC value `tsc`, if KVM gave a wall clock.
    pub fn unix_s_at(&self, tsc: u64) -> Option<u64> {
        self.wall?.unix_s_at(self.time.system_time_at(tsc))
    }
}
