//! Idle: wait for events from the generic timer's event stream (`CNTKCTL_EL1.EVNTEN`), which
//! wakes `wfe` every ~100 µs, until the nap's deadline. No interrupt controller is set up
//! (interrupts stay masked). Under KVM `wfe` sleeps; under TCG it is a hint that returns at
//! once, so the nap polls the counter (the agent's loop tolerates polling).

use super::clock::counter;
use super::read_sysreg;

/// Target period of the event stream, microseconds.
pub const EVENT_PERIOD_US: u64 = 100;

/// The event-stream wait.
#[derive(Debug)]
pub struct EventIdle {
    hz: u64,
}

impl EventIdle {
    /// Turn the event stream on for a counter of `hz`; `None` when `hz` is 0.
    pub fn init(hz: u64) -> Option<EventIdle> {
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
        Some(EventIdle { hz })
    }

    /// Wait until `us` microseconds have passed.
    pub fn nap_us(&self, us: u64) {
        let deadline = counter().saturating_add(us.saturating_mul(self.hz) / 1_000_000);
        while counter() < deadline {
            // SAFETY: `wfe` only waits for an event (the event stream sends one every
            // EVENT_PERIOD_US at most).
            unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
        }
    }
}
