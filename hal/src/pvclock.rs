//! KVM's paravirtual clock (kvmclock, "pvclock"; Linux `Documentation/virt/kvm/x86/msr.rst`):
//! the hypervisor signature in CPUID `0x4000_0000`, the feature bits in `0x4000_0001`, and the
//! two structures the guest asks for through MSRs `0x4b56_4d00` (wall clock at boot) and
//! `0x4b56_4d01` (per-vCPU TSC → nanoseconds scaling). Pure arithmetic over the structures'
//! bytes; reading them is the machine backend's job (`x86_64::clock`).

/// `MSR_KVM_WALL_CLOCK_NEW`: write the physical address of a [`WallClock`].
pub const MSR_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// `MSR_KVM_SYSTEM_TIME_NEW`: write the physical address of a [`VcpuTime`] | 1 (enable).
pub const MSR_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// CPUID leaf with the hypervisor's signature (EBX, ECX, EDX) and its highest leaf (EAX).
pub const LEAF_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf with KVM's features (EAX).
pub const LEAF_FEATURES: u32 = 0x4000_0001;
/// CPUID leaf with the TSC frequency in kHz (EAX), where the VMM sets it (Cloud Hypervisor,
/// QEMU with `invtsc`/`tsc-frequency`).
pub const LEAF_TIMING: u32 = 0x4000_0010;
/// `KVM_FEATURE_CLOCKSOURCE2`: the MSRs above exist.
pub const FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// Bytes of `pvclock_vcpu_time_info`.
pub const VCPU_TIME_LEN: usize = 32;
/// Bytes of `pvclock_wall_clock`.
pub const WALL_CLOCK_LEN: usize = 12;

/// Whether CPUID `0x4000_0000`'s EBX, ECX, EDX spell KVM's signature `"KVMKVMKVM\0\0\0"`.
pub fn is_kvm_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&edx.to_le_bytes());
    &sig == b"KVMKVMKVM\0\0\0"
}

use crate::bytes::{u32_at, u64_at};

/// `pvclock_vcpu_time_info`: system time (ns since the VM started) at a TSC value, and how to
/// scale TSC ticks since then into nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuTime {
    /// Even when the structure is stable (odd: the hypervisor is writing it).
    pub version: u32,
    /// TSC at [`VcpuTime::system_time`].
    pub tsc_timestamp: u64,
    /// Nanoseconds since the VM started, at [`VcpuTime::tsc_timestamp`].
    pub system_time: u64,
    /// Multiplier, 32.32 fixed point, after the shift.
    pub mul: u32,
    /// Power of two applied to the TSC delta before the multiplication.
    pub shift: i8,
}

impl VcpuTime {
    /// Parse the structure's bytes.
    pub fn parse(b: &[u8; VCPU_TIME_LEN]) -> VcpuTime {
        VcpuTime {
            version: u32_at(b, 0),
            tsc_timestamp: u64_at(b, 8),
            system_time: u64_at(b, 16),
            mul: u32_at(b, 24),
            shift: b[28] as i8,
        }
    }

    /// Whether the hypervisor has filled it (a multiplier, a stable version).
    pub fn valid(&self) -> bool {
        self.mul != 0 && self.version.is_multiple_of(2) && (-32..=32).contains(&self.shift)
    }

    /// Nanoseconds since the VM started, at TSC value `tsc`.
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        self.system_time.wrapping_add(scale_delta(
            tsc.wrapping_sub(self.tsc_timestamp),
            self.mul,
            self.shift,
        ))
    }

    /// The TSC frequency in Hz these factors describe (Linux `pvclock_tsc_khz`, in Hz).
    pub fn tsc_hz(&self) -> u64 {
        if self.mul == 0 {
            return 0;
        }
        let hz = (1_000_000_000u64 << 32) / u64::from(self.mul);
        if self.shift < 0 {
            hz.checked_shl(u32::from(self.shift.unsigned_abs()))
                .unwrap_or(0)
        } else {
            hz >> self.shift.unsigned_abs()
        }
    }
}

/// TSC ticks to nanoseconds: `((delta << shift) * mul) >> 32` (a negative shift divides).
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift < 0 {
        delta >> shift.unsigned_abs()
    } else {
        delta << shift.unsigned_abs()
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// `pvclock_wall_clock`: the wall time (UTC) at which the VM's system time was 0.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct WallClock {
    /// Even when stable.
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub sec: u32,
    /// Nanoseconds.
    pub nsec: u32,
}

impl WallClock {
    /// Parse the structure's bytes.
    pub fn parse(b: &[u8; WALL_CLOCK_LEN]) -> WallClock {
        WallClock {
            version: u32_at(b, 0),
            sec: u32_at(b, 4),
            nsec: u32_at(b, 8),
        }
    }

    /// Unix seconds at `system_time_ns` of the VM's system time; `None` if the hypervisor
    /// gave no wall time (0).
    pub fn unix_s_at(&self, system_time_ns: u64) -> Option<u64> {
        if self.sec == 0 || self.version % 2 == 1 {
            return None;
        }
        let ns = u64::from(self.nsec) + system_time_ns;
        Some(u64::from(self.sec) + ns / 1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_signature() {
        // "KVMK" "VMKV" "M\0\0\0"
        assert!(is_kvm_signature(0x4b4d_564b, 0x564b_4d56, 0x0000_004d));
        assert!(!is_kvm_signature(0x4b4d_564b, 0x564b_4d56, 0x0000_0000));
        // Microsoft Hv
        assert!(!is_kvm_signature(0x7263_694d, 0x666f_736f, 0x7648_2074));
    }

    fn vcpu(mul: u32, shift: i8) -> VcpuTime {
        let mut b = [0u8; VCPU_TIME_LEN];
        b[0..4].copy_from_slice(&2u32.to_le_bytes());
        b[8..16].copy_from_slice(&1_000u64.to_le_bytes());
        b[16..24].copy_from_slice(&5_000_000_000u64.to_le_bytes());
        b[24..28].copy_from_slice(&mul.to_le_bytes());
        b[28] = shift as u8;
        VcpuTime::parse(&b)
    }

    #[test]
    fn a_2_ghz_tsc() {
        // 2 GHz: 0.5 ns a tick = mul 2^31 with shift 0.
        let t = vcpu(1 << 31, 0);
        assert!(t.valid());
        assert_eq!(t.tsc_hz(), 2_000_000_000);
        assert_eq!(
            t.system_time_at(1_000 + 2_000_000_000),
            5_000_000_000 + 1_000_000_000
        );
    }

    #[test]
    fn linux_style_factors() {
        // What KVM computes for a 2.9 GHz TSC: shift -1, mul = 2^32 * 2 / 2.9 (ns a tick after
        // halving the delta) = 2962046411.
        let t = vcpu(2_962_046_411, -1);
        let hz = t.tsc_hz();
        assert!((2_899_999_000..2_900_001_000).contains(&hz), "{hz}");
        let one_s = t.system_time_at(1_000 + 2_900_000_000) - 5_000_000_000;
        assert!((999_999_000..1_000_001_000).contains(&one_s), "{one_s}");
        // A 500 MHz TSC: 2 ns a tick, shift 1, mul 2^32.
        let t = vcpu(u32::MAX, 1);
        assert!((499_999_000..500_001_000).contains(&t.tsc_hz()));
    }

    #[test]
    fn unfilled_or_updating_is_not_valid() {
        assert!(!vcpu(0, 0).valid());
        let mut t = vcpu(1 << 31, 0);
        t.version = 3;
        assert!(!t.valid());
        assert_eq!(vcpu(0, 0).tsc_hz(), 0);
    }

    #[test]
    fn wall_clock() {
        let mut b = [0u8; WALL_CLOCK_LEN];
        b[0..4].copy_from_slice(&2u32.to_le_bytes());
        b[4..8].copy_from_slice(&1_796_000_000u32.to_le_bytes());
        b[8..12].copy_from_slice(&900_000_000u32.to_le_bytes());
        let w = WallClock::parse(&b);
        assert_eq!(w.unix_s_at(0), Some(1_796_000_000));
        assert_eq!(w.unix_s_at(100_000_000), Some(1_796_000_001));
        assert_eq!(w.unix_s_at(3_600_000_000_000), Some(1_796_003_600));
        assert_eq!(WallClock::default().unix_s_at(5), None);
        b[0] = 1;
        assert_eq!(WallClock::parse(&b).unix_s_at(0), None);
    }
}
