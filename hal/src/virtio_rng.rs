//! Entropy from a virtio-rng device (`virtio-drivers`' `VirtIORng`), for machines whose CPU
//! has no instruction for it (x86 without RDRAND: Firecracker's `entropy` device, Cloud
//! Hypervisor's always-on virtio-rng, QEMU `-device virtio-rng-*`; aarch64 without RNDR).
//! Arch-neutral: the machine backend finds the transport and [`install`]s the device; the one
//! device is kept here, machine-wide, and any number of [`SharedVirtioRng`] handles fill from
//! it.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::SomeTransport;

use crate::virtio_net::DmaHal;
use crate::{Entropy, EntropyError};

/// Empty answers tolerated per fill before the device is declared failed.
pub const EMPTY_RETRIES: u32 = 10;

type Device = VirtIORng<DmaHal, SomeTransport<'static>>;

/// A virtio-rng device, brought up, not yet [`install`]ed.
pub struct VirtioRng {
    dev: Device,
}

impl VirtioRng {
    /// Initialise the device over `transport`; `None` if it refuses.
    pub fn new(transport: SomeTransport<'static>) -> Option<VirtioRng> {
        VirtIORng::new(transport).ok().map(|dev| VirtioRng { dev })
    }
}

/// The machine's virtio-rng device, once [`install`]ed (INSTALLED set; uninitialised memory
/// is all zero, so this lies in `.bss`, not in the image file).
static mut DEVICE: MaybeUninit<VirtioRng> = MaybeUninit::uninit();
/// Held by whoever accesses [`DEVICE`] (one [`install`] or one fill at a time).
static BUSY: AtomicBool = AtomicBool::new(false);
/// Set once [`DEVICE`] holds the device.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Keep `rng` as the machine's virtio-rng device; `false` (and `rng` dropped) if one already
/// is.
pub fn install(rng: VirtioRng) -> bool {
    if BUSY.swap(true, Ordering::Acquire) {
        return false;
    }
    let fresh = !INSTALLED.load(Ordering::Relaxed);
    if fresh {
        // SAFETY: BUSY, held here, makes this the only access to DEVICE; it is not
        // initialised yet (INSTALLED is not set), so nothing is overwritten or aliased.
        unsafe { (&raw mut DEVICE).write(MaybeUninit::new(rng)) };
        INSTALLED.store(true, Ordering::Relaxed);
    }
    BUSY.store(false, Ordering::Release);
    fresh
}

/// Whether a device was [`install`]ed.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// A handle on the machine's virtio-rng device: fills fail with
/// [`EntropyError::Unavailable`] until one is [`install`]ed, and with
/// [`EntropyError::Failed`] while another handle is filling (or the device keeps answering
/// nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedVirtioRng;

impl Entropy for SharedVirtioRng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        if !installed() {
            return Err(EntropyError::Unavailable);
        }
        if BUSY.swap(true, Ordering::Acquire) {
            return Err(EntropyError::Failed);
        }
        // SAFETY: BUSY, held until the end of this function, makes this the only reference
        // to DEVICE; INSTALLED says `install` initialised it (under BUSY, which this swap
        // acquired after `install` released it); `MaybeUninit<T>` has the layout of `T`.
        let rng = unsafe { &mut *(&raw mut DEVICE).cast::<VirtioRng>() };
        let result = fill_from(&mut rng.dev, buf);
        BUSY.store(false, Ordering::Release);
        result
    }
}

/// Fill `buf` from `dev`, asking again on empty answers ([`EMPTY_RETRIES`] of them).
fn fill_from(dev: &mut Device, buf: &mut [u8]) -> Result<(), EntropyError> {
    let mut at = 0;
    let mut empty = 0;
    while at < buf.len() {
        match dev.request_entropy(&mut buf[at..]) {
            Ok(0) if empty < EMPTY_RETRIES => empty += 1,
            Ok(0) | Err(_) => return Err(EntropyError::Failed),
            Ok(n) => at += n.min(buf.len() - at),
        }
    }
    Ok(())
}
