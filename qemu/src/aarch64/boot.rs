//! From the Linux arm64 boot protocol to Rust.
//!
//! The image is a Linux arm64 `Image`: a flat binary (xtask makes it from the ELF) that starts
//! with the 64-byte Image header (a branch to the entry, `text_offset`, `image_size`, flags
//! little-endian | 4 KiB pages, magic `ARM\x64`). QEMU `-kernel` (and Firecracker, Cloud
//! Hypervisor) load it at RAM base + `text_offset` — `0x4008_0000` on QEMU `virt`, the link
//! address (`linker-aarch64.ld`) — and enter it with the MMU off and the device tree's address
//! in `x0`. The entry code:
//!
//! 1. keeps `x0`; drops from EL2 to EL1 if entered at EL2 (`-M virt,virtualization=on`), with
//!    the timers, FP/SIMD and the GICv3 CPU interface's system registers left to EL1;
//! 2. lets EL1 use FP/SIMD (`CPACR_EL1`; the softfloat target does not emit such instructions,
//!    but nothing traps if a dependency does);
//! 3. turns the MMU on with an identity map from tables it writes (`imds_boot_l1`, 1 GiB blocks:
//!    device memory for the high ECAM at 256 GiB, normal write-back memory for RAM from 2 GiB
//!    to 4 GiB; `imds_boot_l2`, 2 MiB blocks: device memory for the first GiB — GIC, UART,
//!    RTC, fw_cfg, virtio-mmio, the PCIe windows and ECAM — and normal memory for the first
//!    GiB of RAM, where the image lies; less the 2 MiB guard block under the stack), with
//!    caches on: atomics and coherent virtqueues need them;
//! 4. zeroes `.bss` and the stack (`linker-aarch64.ld`: 512 KiB of the RAM below the image,
//!    above the unmapped guard — the top 2 MiB of the ECAM window, just below RAM — so an
//!    overflow faults instead of writing elsewhere), sets `sp` and `VBAR_EL1` (every
//!    exception is reported on the console by `imds_exception`, on its own small stack, and
//!    stops the machine with `exit_code::CPU_EXCEPTION`);
//! 5. calls `imds_boot_main(dtb)`.
//!
//! Interrupts stay masked for the whole run (the agent polls).

/// The stack the exception reporter runs on (the agent's may be what overflowed).
pub const EXCEPTION_STACK_SIZE: usize = 16 * 1024;
/// The Image header's `text_offset`: the image is linked at QEMU `virt`'s RAM base
/// (`0x4000_0000`) + this (`IMAGE_BASE` in `linker-aarch64.ld`).
pub const TEXT_OFFSET: u64 = 0x8_0000;
/// Image header flags: little-endian (bit 0 clear), 4 KiB pages (bits 1-2 = 1), placed
/// 2 MiB-aligned near the start of RAM (bit 3 clear).
pub const IMAGE_FLAGS: u64 = 0b0010;

/// Block descriptor attributes: device memory (MAIR index 0, nGnRnE), access flag, never
/// executable.
pub const DEVICE_BLOCK: u64 = 0x1 | (1 << 10) | (1 << 53) | (1 << 54);
/// Block descriptor attributes: normal memory (MAIR index 1, write-back), inner shareable,
/// access flag, EL1 read-write.
pub const NORMAL_BLOCK: u64 = 0x1 | (1 << 2) | (3 << 8) | (1 << 10);
const _: () = assert!(DEVICE_BLOCK & 0x0000_FFFF_FFFF_0000 == 0 && NORMAL_BLOCK < 0x1_0000);

/// MAIR_EL1: attribute 0 = Device-nGnRnE, attribute 1 = Normal, inner and outer write-back
/// read/write-allocate.
pub const MAIR: u64 = 0xFF << 8;
/// TCR_EL1 without IPS: T0SZ = 25 (39-bit addresses, translation starts at level 1, 1 GiB
/// blocks), table walks write-back cacheable and inner shareable, 4 KiB granule, TTBR1 walks
/// disabled (EPD1). IPS is set at run time from `ID_AA64MMFR0_EL1.PARange`.
pub const TCR: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23);
/// SCTLR_EL1 for the drop from EL2 (reserved-one bits, MMU and caches off).
pub const SCTLR_EL1_RES1: u64 = 0x30D0_0800;

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    /* The Linux arm64 Image header (Documentation/arch/arm64/booting.rst). */
    b       imds_entry                  /* code0 */
    .long   0                           /* code1 */
    .quad   {text_offset}               /* text_offset */
    .quad   __image_size                /* image_size, .bss included */
    .quad   {flags}                     /* flags */
    .quad   0                           /* res2 */
    .quad   0                           /* res3 */
    .quad   0                           /* res4 */
    .ascii  "ARM\x64"                   /* magic */
    .long   0                           /* res5: no PE/COFF header */

imds_entry:
    mov     x19, x0                     /* the device tree */

    /* Entered at EL2: run the image at EL1 (AArch64), timers and FP/SIMD untrapped. */
    mrs     x1, CurrentEL
    ubfx    x1, x1, #2, #2
    cmp     x1, #2
    b.ne    1f
    mov     x1, #(1 << 31)              /* HCR_EL2.RW */
    msr     hcr_el2, x1
    mov     x1, #3                      /* CNTHCTL_EL2: EL1PCTEN | EL1PCEN */
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff                 /* CPTR_EL2: reserved-one bits, no traps */
    msr     cptr_el2, x1
    msr     hstr_el2, xzr
    mrs     x1, id_aa64pfr0_el1         /* GICv3 system registers? */
    ubfx    x1, x1, #24, #4
    cbz     x1, 3f
    mrs     x1, s3_4_c12_c9_5           /* ICC_SRE_EL2: SRE | Enable (EL1 may use its own) */
    orr     x1, x1, #1
    orr     x1, x1, #8
    msr     s3_4_c12_c9_5, x1
    isb
    msr     s3_4_c12_c11_0, xzr         /* ICH_HCR_EL2: no virtual CPU interface */
3:
    movz    x1, #{sctlr_lo}
    movk    x1, #{sctlr_hi}, lsl #16
    msr     sctlr_el1, x1
    mov     x1, #0x3c5                  /* SPSR: EL1h, D A I F masked */
    msr     spsr_el2, x1
    adr     x1, 1f
    msr     elr_el2, x1
    eret
1:
    /* FP/SIMD at EL1 without traps. */
    mov     x1, #(3 << 20)              /* CPACR_EL1.FPEN */
    msr     cpacr_el1, x1
    isb

    /* The translation tables (not in the file: 12 KiB less to load), written with the MMU
       off. Level 1: every entry, then the five used. */
    adrp    x1, imds_boot_l1
    adrp    x2, imds_boot_l2
    mov     x3, x1
7:
    stp     xzr, xzr, [x3], #16
    cmp     x3, x2
    b.lo    7b
    movz    x3, #{device_lo}
    movk    x3, #{device_hi}, lsl #48
    movk    x3, #0x40, lsl #32
    str     x3, [x1, #2048]             /* 256..257 GiB: high PCIe ECAM */
    orr     x3, x2, #3
    str     x3, [x1]                    /* 0..1 GiB: devices, PCIe windows, ECAM (table) */
    add     x3, x3, #4096
    str     x3, [x1, #8]                /* 1..2 GiB: RAM, 2 MiB blocks (table descriptor) */
    movz    x3, #{normal}
    movk    x3, #0x8000, lsl #16
    str     x3, [x1, #16]               /* 2..3 GiB: RAM */
    movk    x3, #0xC000, lsl #16
    str     x3, [x1, #24]               /* 3..4 GiB: RAM */
    /* Level 2, the two tables one after the other: 512 device blocks of 2 MiB from 0, then
       512 normal ones from 0x4000_0000. */
    movz    x3, #{device_lo}
    movk    x3, #{device_hi}, lsl #48
    mov     x4, x2
    add     x5, x2, #4096
8:
    str     x3, [x4], #8
    add     x3, x3, #0x200000
    cmp     x4, x5
    b.lo    8b
    movz    x3, #{normal}
    movk    x3, #0x4000, lsl #16
    add     x5, x5, #4096
10:
    str     x3, [x4], #8
    add     x3, x3, #0x200000
    cmp     x4, x5
    b.lo    10b
    /* Unmap the 2 MiB block under the stack: below RAM (the top of the ECAM window) or, in
       an unoptimised build, in RAM (entry 0..1023 of the two tables). */
    adrp    x3, __stack_guard
    ubfx    x3, x3, #21, #10
    str     xzr, [x2, x3, lsl #3]
    /* Drop any stale cache line of the tables: the table walks that follow are cacheable. */
    mrs     x6, ctr_el0
    ubfx    x6, x6, #16, #4             /* DminLine: log2 of the line in words */
    mov     x7, #4
    lsl     x7, x7, x6
    mov     x3, x1
9:
    dc      ivac, x3
    add     x3, x3, x7
    cmp     x3, x5
    b.lo    9b
    dsb     sy

    /* MMU: identity map from imds_boot_l1, caches on. */
    movz    x1, #{mair}
    msr     mair_el1, x1
    mrs     x2, id_aa64mmfr0_el1
    and     x2, x2, #7                  /* PARange */
    mov     x3, #5                      /* at most 48 bits with 4 KiB pages */
    cmp     x2, x3
    csel    x2, x2, x3, lo
    movz    x1, #{tcr_lo}
    movk    x1, #{tcr_hi}, lsl #16
    orr     x1, x1, x2, lsl #32         /* IPS */
    msr     tcr_el1, x1
    adrp    x1, imds_boot_l1
    msr     ttbr0_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mrs     x1, sctlr_el1
    orr     x1, x1, #1                  /* M: MMU on */
    orr     x1, x1, #(1 << 2)           /* C: data cache */
    orr     x1, x1, #(1 << 12)          /* I: instruction cache */
    bic     x1, x1, #(1 << 1)           /* A: no alignment faults */
    msr     sctlr_el1, x1
    isb

    /* Zero .bss and the stack (4 KiB aligned starts, 64-byte aligned ends). */
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
    bl      imds_zero
    adrp    x1, __stack_bottom
    add     x1, x1, :lo12:__stack_bottom
    adrp    x2, __stack_top
    add     x2, x2, :lo12:__stack_top
    bl      imds_zero
    mov     sp, x2
    adrp    x1, imds_vectors
    add     x1, x1, :lo12:imds_vectors
    msr     vbar_el1, x1
    isb
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    bl      imds_boot_main
4:
    wfi
    b       4b

    /* Zero [x1, x2) (64-byte aligned ends), 64 bytes per turn: QEMU's TCG dispatches each
       turn, so fewer, bigger turns are faster (~4x). No stack used. */
imds_zero:
    cmp     x1, x2
    b.hs    5f
6:
    stp     xzr, xzr, [x1]
    stp     xzr, xzr, [x1, #16]
    stp     xzr, xzr, [x1, #32]
    stp     xzr, xzr, [x1, #48]
    add     x1, x1, #64
    cmp     x1, x2
    b.lo    6b
5:
    ret

    /* Exception vectors: 16 entries of 128 bytes (current EL with SP0 / SPx, lower EL
       AArch64 / AArch32; synchronous, IRQ, FIQ, SError each). */
    .section .text.imds_vectors, "ax"
    .p2align 11
    .global imds_vectors
imds_vectors:
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .p2align 7
    mov     x0, #\n
    b       imds_vector_common
    .endr
imds_vector_common:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mov     x4, sp
    adrp    x5, imds_exception_stack_top    /* nothing returns: start it afresh each time */
    add     x5, x5, :lo12:imds_exception_stack_top
    mov     sp, x5
    mov     x29, xzr
    bl      imds_exception
6:
    wfi
    b       6b

    /* The translation tables: level 1 (512 entries of 1 GiB), then level 2 for the first
       GiB (devices) and for the first GiB of RAM (512 of 2 MiB each), written by the code
       above; not zeroed with .bss. */
    .section .pagetables, "aw", %nobits
    .p2align 12
    .global imds_boot_l1
imds_boot_l1:
    .skip   4096
    .global imds_boot_l2
imds_boot_l2:
    .skip   8192

    .section .bss.imds_exception_stack, "aw", %nobits
    .p2align 4
imds_exception_stack:
    .skip   {exception_stack_size}
imds_exception_stack_top:
    "#,
    text_offset = const TEXT_OFFSET,
    flags = const IMAGE_FLAGS,
    sctlr_lo = const SCTLR_EL1_RES1 & 0xFFFF,
    sctlr_hi = const SCTLR_EL1_RES1 >> 16,
    mair = const MAIR,
    tcr_lo = const TCR & 0xFFFF,
    tcr_hi = const TCR >> 16,
    device_lo = const DEVICE_BLOCK & 0xFFFF,
    device_hi = const DEVICE_BLOCK >> 48,
    normal = const NORMAL_BLOCK,
    exception_stack_size = const EXCEPTION_STACK_SIZE,
);

/// The stack the agent runs on, `(bottom, top)`.
pub fn stack() -> (u64, u64) {
    extern "C" {
        static __stack_bottom: u8;
        static __stack_top: u8;
    }
    // Only the addresses of these linker symbols are taken, never their contents.
    (
        core::ptr::addr_of!(__stack_bottom) as u64,
        core::ptr::addr_of!(__stack_top) as u64,
    )
}

/// The current stack pointer and the top of the stack, for the panic handler's walk
/// (`unikernel::code_addresses_on_stack`).
pub fn stack_walk_bounds() -> (u64, u64) {
    let sp: u64;
    // SAFETY: reads the stack pointer into a register; no memory is touched.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
    (sp, stack().1)
}
