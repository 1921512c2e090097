//! The network loop's idle policy, shared by the agent's image and the network floor image: the
//! NIC is polled, so a quiet loop naps on the arch's idle timer between polls.

use crate::arch;

/// After the last frame, keep polling without pause this long (the rest of an exchange).
const SPIN_AFTER_BUSY_US: u64 = 20_000;
/// Longest sleep while idle: the worst added latency for the first frame of a new exchange.
const IDLE_NAP_US: u64 = 1_000;

/// Quiet for [`SPIN_AFTER_BUSY_US`]: sleep a short nap (the NIC is polled, not
/// interrupt-driven, so a nap delays the first frame of the next burst by at most
/// [`IDLE_NAP_US`]), shorter if the network stack wants a turn sooner (`next_in`).
pub fn when_quiet(
    timer: Option<&arch::Idle>,
    now_us: u64,
    last_busy_us: u64,
    next_in: Option<smoltcp::time::Duration>,
) {
    if now_us.saturating_sub(last_busy_us) >= SPIN_AFTER_BUSY_US {
        if let Some(timer) = timer {
            let us = next_in.map_or(IDLE_NAP_US, |d| d.total_micros().min(IDLE_NAP_US));
            arch::nap(timer, us);
        }
    }
}
