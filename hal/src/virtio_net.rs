//! The NIC: a virtio-net device driven by `virtio-drivers` (`VirtIONetRaw` over a PCI or a
//! virtio-mmio transport), exposed as a [`smoltcp::phy::Device`] with `Medium::Ethernet`.
//! Arch-neutral: each machine backend finds the transport (`x86_64::nic::probe`, …) and hands
//! it to [`VirtioNet::new`].
//!
//! Memory: physical = virtual (the boot code identity-maps RAM and the device windows). Virtqueues come from a static page arena ([`DmaHal`]); packet buffers are static
//! arrays owned by the one [`VirtioNet`], so they never move while the device may touch them.
//! Receive buffers are posted at start and re-posted once smoltcp has consumed them; transmit
//! buffers are reclaimed when the device reports them used.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::text::Text;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport, VirtioPciError};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::pci::{BarAllocator, BarError};

/// Descriptors per virtqueue (receive and transmit each); also the number of packet buffers
/// of each direction.
pub const QUEUE_SIZE: usize = 16;
/// One packet buffer: virtio-net header + an Ethernet frame (virtio-drivers wants >= 1526).
pub const BUF_LEN: usize = 2048;
/// Ethernet frame without FCS: 1500 bytes of payload + 14 of header.
pub const MTU: usize = 1514;
/// Pages in the virtqueue arena (each queue takes two with the PCI transport's layout).
const ARENA_PAGES: usize = 8;

#[repr(C, align(4096))]
struct Arena([u8; ARENA_PAGES * PAGE_SIZE]);

/// DMA memory for virtqueues; handed out page by page, never reused (queues live for the whole
/// run), so every page handed out is still zero from `.bss`.
static mut ARENA: Arena = Arena([0; ARENA_PAGES * PAGE_SIZE]);
static ARENA_NEXT: AtomicUsize = AtomicUsize::new(0);

/// `virtio-drivers`' view of this machine: identity mapping, a static DMA arena.
#[derive(Debug)]
pub struct DmaHal;

// SAFETY: `dma_alloc` returns page-aligned, zeroed, never-aliased pages of a static that lives
// forever (each page is handed out once); the boot code identity-maps RAM, so the physical
// address given to the device is the pointer; MMIO BARs and slots lie in the device windows
// the boot code identity-maps as device memory.
unsafe impl Hal for DmaHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = ARENA_NEXT.fetch_add(pages, Ordering::Relaxed);
        assert!(first + pages <= ARENA_PAGES, "virtio DMA arena exhausted");
        // SAFETY: `first + pages <= ARENA_PAGES`, so the range lies inside ARENA, and the
        // fetch_add above gives these pages to this caller only. No reference to ARENA is made.
        let ptr = unsafe { (&raw mut ARENA).cast::<u8>().add(first * PAGE_SIZE) };
        let ptr = NonNull::new(ptr).expect("static address is not null");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Leaked on purpose: the queues live until the machine stops.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("BAR at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        // Identity mapping, coherent DMA: the device reads and writes the buffer in place.
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

type Buf = [u8; BUF_LEN];

struct Buffers {
    rx: [Buf; QUEUE_SIZE],
    tx: [Buf; QUEUE_SIZE],
    tx_scratch: Buf,
}

static mut BUFFERS: Buffers = Buffers {
    rx: [[0; BUF_LEN]; QUEUE_SIZE],
    tx: [[0; BUF_LEN]; QUEUE_SIZE],
    tx_scratch: [0; BUF_LEN],
};
static BUFFERS_TAKEN: AtomicBool = AtomicBool::new(false);

type Raw = VirtIONetRaw<DmaHal, SomeTransport<'static>, QUEUE_SIZE>;

/// The virtio-mmio magic, "virt" little-endian.
const VIRTIO_MMIO_MAGIC: u32 = 0x7472_6976;

/// Why the NIC could not be brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicError {
    /// No virtio-net device where the machine's backend looked (named by the string).
    NotFound(&'static str),
    /// Its BARs could not be assigned.
    Bars(BarError),
    /// The virtio PCI capabilities are missing or broken.
    Transport(VirtioPciError),
    /// The device refused initialisation or queue setup.
    Driver(virtio_drivers::Error),
    /// The NIC was already brought up (the packet buffers are single-owner).
    AlreadyTaken,
}

impl NicError {
    /// The message, written without `core::fmt` (the image's console).
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        match self {
            NicError::NotFound(looked) => {
                out.put("no virtio-net device (").put(looked).put(")");
            }
            NicError::Bars(e) => {
                out.put("virtio-net: ").put(e.as_str());
            }
            NicError::Transport(_) => {
                out.put("virtio-net PCI transport: its capabilities are missing or broken");
            }
            NicError::Driver(e) => {
                out.put("virtio-net driver: ").put(driver_error(e));
            }
            NicError::AlreadyTaken => {
                out.put("virtio-net already initialised");
            }
        }
    }
}

/// What virtio-drivers' error means, as a plain string.
fn driver_error(e: &virtio_drivers::Error) -> &'static str {
    use virtio_drivers::Error as E;
    match e {
        E::QueueFull => "virtqueue full",
        E::NotReady => "device not ready",
        E::WrongToken => "device used an unexpected descriptor chain",
        E::AlreadyUsed => "virtqueue already in use",
        E::InvalidParam => "invalid parameter",
        E::DmaError => "DMA memory could not be allocated",
        E::IoError => "I/O error",
        E::Unsupported => "request not supported by the device",
        E::ConfigSpaceTooSmall => "config space smaller than expected",
        E::ConfigSpaceMissing => "config space missing",
        _ => "device error",
    }
}

impl core::fmt::Display for NicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl core::error::Error for NicError {}

/// Receive side: buffers, the descriptor token each posted buffer got, and the buffer lent to
/// smoltcp last (re-posted on the next poll).
struct RxRing {
    bufs: &'static mut [Buf; QUEUE_SIZE],
    posted: [Option<u16>; QUEUE_SIZE],
    lent: Option<usize>,
}

/// Transmit side: buffers and, per buffer in flight, its token and length.
struct TxRing {
    bufs: &'static mut [Buf; QUEUE_SIZE],
    scratch: &'static mut Buf,
    in_flight: [Option<(u16, usize)>; QUEUE_SIZE],
    dropped: u64,
}

impl TxRing {
    /// Take back every buffer the device has finished sending.
    fn reclaim(&mut self, raw: &mut Raw) {
        while let Some(token) = raw.poll_transmit() {
            let Some(i) = self
                .in_flight
                .iter()
                .position(|e| matches!(e, Some((t, _)) if *t == token))
            else {
                // Not ours: cannot pop it without its buffer. Leave it (never happens).
                break;
            };
            let len = self.in_flight[i].map_or(0, |(_, l)| l);
            // SAFETY: buffer `i` with length `len` is exactly the slice given to
            // `transmit_begin` when it returned `token`.
            let _ = unsafe { raw.transmit_complete(token, &self.bufs[i][..len]) };
            self.in_flight[i] = None;
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.in_flight.iter().position(Option::is_none)
    }
}

/// The virtio-net NIC as a smoltcp device.
pub struct VirtioNet {
    raw: Raw,
    rx: RxRing,
    tx: TxRing,
}

impl core::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.raw.mac_address())
            .field("tx_dropped", &self.tx.dropped)
            .finish()
    }
}

/// A virtio-mmio transport at `addr` (a slot of `size` bytes), if the slot holds a network
/// device.
///
/// # Safety
/// `addr` must be identity-mapped device memory that is a virtio-mmio slot or reads harmlessly
/// (all ones or zeros) when empty, valid for the whole run, and used by nothing else.
pub unsafe fn mmio_net_at(addr: u64, size: usize) -> Option<MmioTransport<'static>> {
    // SAFETY: as this function's.
    unsafe { mmio_device_at(addr, size, DeviceType::Network) }
}

/// A virtio-mmio transport at `addr` (a slot of `size` bytes), if the slot holds a device of
/// type `ty`.
///
/// # Safety
/// As [`mmio_net_at`].
pub unsafe fn mmio_device_at(
    addr: u64,
    size: usize,
    ty: DeviceType,
) -> Option<MmioTransport<'static>> {
    // SAFETY: the caller vouches that `addr` is mapped device memory where reading the ID
    // registers has no side effect.
    let id = unsafe { core::ptr::read_volatile((addr + MMIO_DEVICE_ID) as *const u32) };
    // SAFETY: as above.
    if id != u32::from(ty as u8) || !unsafe { mmio_magic_at(addr) } {
        // Not the kind sought: no transport is made for it, as dropping one resets the device
        // (another backend may be using it, e.g. the virtio-rng found before the NIC).
        return None;
    }
    let header = NonNull::new(addr as *mut VirtIOHeader)?;
    // SAFETY: the caller vouches for `addr` (see above) and the magic and device ID say it is
    // a virtio-mmio slot of the kind sought; the transport returned is its only user.
    let transport = unsafe { MmioTransport::new(header, size) }.ok()?;
    (transport.device_type() == ty).then_some(transport)
}

/// virtio-mmio register: the device ID (0: no device in this slot).
const MMIO_DEVICE_ID: u64 = 0x008;

/// Whether the virtio-mmio magic is at `addr`.
///
/// # Safety
/// As [`mmio_net_at`].
pub unsafe fn mmio_magic_at(addr: u64) -> bool {
    // SAFETY: the caller vouches that `addr` is mapped device memory where a read of the
    // magic register (offset 0) has no side effect.
    let magic = unsafe { core::ptr::read_volatile(addr as *const u32) };
    magic == VIRTIO_MMIO_MAGIC
}

/// The first virtio-net function on bus 0 of `root`, its BARs assigned by `bars` where unset,
/// as a transport (`Ok(None)`: no such function).
pub fn pci_net<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    bars: &mut BarAllocator,
) -> Result<Option<PciTransport>, NicError> {
    pci_device(root, bars, DeviceType::Network)
}

/// The first virtio function of type `ty` on bus 0 of `root`, as [`pci_net`] does it.
pub fn pci_device<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    bars: &mut BarAllocator,
    ty: DeviceType,
) -> Result<Option<PciTransport>, NicError> {
    let Some(df) = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(ty))
        .map(|(df, _)| df)
    else {
        return Ok(None);
    };
    bars.assign(root, df).map_err(NicError::Bars)?;
    PciTransport::new::<DmaHal, _>(root, df)
        .map(Some)
        .map_err(NicError::Transport)
}

impl VirtioNet {
    /// Initialise the device over `transport` and post the receive buffers. Once per boot.
    pub fn new(transport: SomeTransport<'static>) -> Result<VirtioNet, NicError> {
        if BUFFERS_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(NicError::AlreadyTaken);
        }
        let ptr = &raw mut BUFFERS;
        // SAFETY: the swap above makes this the only reference ever made to BUFFERS.
        let buffers: &'static mut Buffers = unsafe { &mut *ptr };
        let mut raw = Raw::new(transport).map_err(NicError::Driver)?;
        raw.disable_interrupts();
        let mut rx = RxRing {
            bufs: &mut buffers.rx,
            posted: [None; QUEUE_SIZE],
            lent: None,
        };
        for i in 0..QUEUE_SIZE {
            // SAFETY: buffer `i` is static, owned by this ring, and not touched again until the
            // device hands back `token` (`receive` then completes it with the same slice).
            let token = unsafe { raw.receive_begin(&mut rx.bufs[i]) }.map_err(NicError::Driver)?;
            rx.posted[i] = Some(token);
        }
        Ok(VirtioNet {
            raw,
            rx,
            tx: TxRing {
                bufs: &mut buffers.tx,
                scratch: &mut buffers.tx_scratch,
                in_flight: [None; QUEUE_SIZE],
                dropped: 0,
            },
        })
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.raw.mac_address()
    }

    /// Frames dropped because every transmit buffer was in flight.
    pub fn tx_dropped(&self) -> u64 {
        self.tx.dropped
    }

    /// Give the buffer lent to smoltcp back to the device.
    fn repost_lent(&mut self) {
        if let Some(i) = self.rx.lent.take() {
            // SAFETY: as in `new`: buffer `i` is no longer borrowed (the RxToken that lent it is
            // gone, since `&mut self` is held) and belongs to this ring.
            if let Ok(token) = unsafe { self.raw.receive_begin(&mut self.rx.bufs[i]) } {
                self.rx.posted[i] = Some(token);
            }
        }
    }
}

/// A received frame, borrowed from its DMA buffer until smoltcp is done with it.
pub struct VirtioRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for VirtioRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Permission to send one frame.
pub struct VirtioTxToken<'a> {
    raw: &'a mut Raw,
    tx: &'a mut TxRing,
}

impl phy::TxToken for VirtioTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let VirtioTxToken { raw, tx } = self;
        tx.reclaim(raw);
        let slot = tx.free_slot();
        if let Some(i) = slot {
            let buf = &mut tx.bufs[i];
            if let Ok(hdr) = raw.fill_buffer_header(buf) {
                let total = hdr + len;
                if total <= BUF_LEN {
                    let r = f(&mut buf[hdr..total]);
                    // SAFETY: buffer `i` is static and stays untouched until `reclaim` sees the
                    // device return `token` and completes it with the same slice.
                    match unsafe { raw.transmit_begin(&buf[..total]) } {
                        Ok(token) => tx.in_flight[i] = Some((token, total)),
                        Err(_) => tx.dropped += 1,
                    }
                    return r;
                }
            }
        }
        // No buffer (or an oversized frame): let smoltcp write into scratch, and drop it.
        tx.dropped += 1;
        let n = len.min(BUF_LEN);
        f(&mut tx.scratch[..n])
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = VirtioRxToken<'a>;
    type TxToken<'a> = VirtioTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.repost_lent();
        let token = self.raw.poll_receive()?;
        let i = self.rx.posted.iter().position(|t| *t == Some(token))?;
        self.rx.posted[i] = None;
        // SAFETY: buffer `i` is the one passed to `receive_begin` that returned `token`.
        let done = unsafe { self.raw.receive_complete(token, &mut self.rx.bufs[i]) };
        self.rx.lent = Some(i);
        let (hdr, len) = done.ok()?;
        let end = (hdr + len).min(BUF_LEN);
        Some((
            VirtioRxToken {
                frame: &self.rx.bufs[i][hdr..end],
            },
            VirtioTxToken {
                raw: &mut self.raw,
                tx: &mut self.tx,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.repost_lent();
        self.tx.reclaim(&mut self.raw);
        self.tx.free_slot()?;
        Some(VirtioTxToken {
            raw: &mut self.raw,
            tx: &mut self.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(QUEUE_SIZE);
        caps
    }
}
