//! The heap of the `rsa` image: the rsa crate's big integers allocate (RSA keys in the config,
//! PS256/RS256 signatures, RSA server certificates). Nothing else in the image allocates, and
//! the issuer and broker images have no heap at all.
//!
//! An allocation that cannot be served ends in the panic handler (message on the console,
//! non-zero exit), never in silent corruption.

use core::cell::UnsafeCell;
use linked_list_allocator::LockedHeap;

/// Bytes of heap (an RSA-2048 signature needs a few KiB at a time).
pub const HEAP_SIZE: usize = 256 * 1024;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// The heap's memory, in .bss.
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: the arena is handed to the allocator once, in `init`, and never touched otherwise;
// the guest is single-core with interrupts off.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

/// Give the arena to the allocator. Called once at boot, before anything allocates.
pub fn init() {
    // SAFETY: `ARENA` is a static of HEAP_SIZE bytes used by nothing but the allocator, and
    // `init` runs once (boot, single core) before the first allocation.
    unsafe { ALLOCATOR.lock().init(ARENA.0.get().cast::<u8>(), HEAP_SIZE) }
}
