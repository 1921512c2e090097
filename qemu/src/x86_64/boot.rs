//! From QEMU's PVH entry to Rust.
//!
//! QEMU (`-kernel`, QEMU >= 4.0) loads this ELF at its link address (1 MiB, see `linker.ld`) and,
//! because of the `XEN_ELFNOTE_PHYS32_ENTRY` note below, jumps to `pvh_start32` in 32-bit
//! protected mode with paging off and `ebx` pointing at an `hvm_start_info`. The trampoline:
//!
//! 1. zeroes `.bss` (page tables, stack, every static of the image);
//! 2. identity-maps the first 4 GiB with 2 MiB pages (RAM and the PCI BARs near 4 GiB);
//! 3. enables PAE, long mode and paging, loads a 64-bit GDT and far-returns into 64-bit code;
//! 4. sets up a small stack of [`STACK_SIZE`] bytes and calls `imds_boot_main(start_info)`,
//!    which moves to a big stack in RAM the PVH memory map reports ([`big_stack`]: below 1 MiB
//!    when there is enough there, so that `-m 2` fits) before it does anything else.
//!
//! `imds_boot_main` installs an IDT first thing (`imds_hal::x86_64::interrupts::init`): a CPU
//! exception prints what happened and exits with `exit_code::CPU_EXCEPTION`. Interrupts stay
//! off except inside the idle nap (`sti; hlt; cli` until the LAPIC timer fires: the agent
//! polls). A fault before the IDT is in place triple-faults and QEMU resets (no reboot loop:
//! the profiles pass `-no-reboot`).

/// The early stack, in `.bss`: enough for `imds_boot_main` up to [`run_on_big_stack`].
pub const STACK_SIZE: usize = 16 * 1024;

/// The stack the agent runs on: at least this much RAM from the PVH memory map ([`big_stack`];
/// measured high-water mark 358 KiB: `cargo xtask bench boot`).
pub const BIG_STACK_MIN: u64 = 448 * 1024;
/// At most this much of the region is used.
pub const BIG_STACK_MAX: u64 = 1024 * 1024;
/// RAM below this address is left alone (real-mode IVT and BIOS data, QEMU's PVH structures).
pub const LOW_RAM_FIRST: u64 = 0x1_0000;
/// The first address above the real-mode region (the image is linked here).
pub const HIGH_RAM_FIRST: u64 = 0x10_0000;

/// `hvm_start_info.magic` (Xen's `XEN_HVM_START_MAGIC_VALUE`).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

core::arch::global_asm!(
    r#"
    /* PVH entry point note: type 18 (XEN_ELFNOTE_PHYS32_ENTRY), name "Xen", 8-byte address. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .p2align 2
    .quad pvh_start32
    .p2align 2

    .section .text.boot32, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                    /* hvm_start_info, kept for Rust */

    /* Zero .bss (64-byte aligned at both ends, see linker.ld), 64 bytes per turn: QEMU's TCG
       runs `rep stosd` one dispatch per 4 bytes (~1.7 ms for this .bss), a turn in one. */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    xor eax, eax
    jmp .Lzero_bss_test
.Lzero_bss:
    mov [edi + 0], eax
    mov [edi + 4], eax
    mov [edi + 8], eax
    mov [edi + 12], eax
    mov [edi + 16], eax
    mov [edi + 20], eax
    mov [edi + 24], eax
    mov [edi + 28], eax
    mov [edi + 32], eax
    mov [edi + 36], eax
    mov [edi + 40], eax
    mov [edi + 44], eax
    mov [edi + 48], eax
    mov [edi + 52], eax
    mov [edi + 56], eax
    mov [edi + 60], eax
    add edi, 64
.Lzero_bss_test:
    cmp edi, ecx
    jb .Lzero_bss
    mov esp, offset boot_stack_top  /* PVH leaves esp undefined */

    /* PML4[0] -> PDPT. */
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov edi, offset boot_pml4
    mov [edi], eax

    /* PDPT[0..4] -> the four page directories. */
    mov eax, offset boot_pd
    or eax, 0x3
    mov edi, offset boot_pdpt
    mov ecx, 4
.Lfill_pdpt:
    mov [edi], eax
    add eax, 0x1000
    add edi, 8
    dec ecx
    jnz .Lfill_pdpt

    /* 2048 x 2 MiB pages: present | writable | page size. */
    mov eax, 0x83
    mov edi, offset boot_pd
    mov ecx, 2048
.Lfill_pd:
    mov [edi], eax
    add eax, 0x200000
    add edi, 8
    dec ecx
    jnz .Lfill_pd

    /* Memory type: write-back by default (MTRRdefType: enabled, WB). qboot sets up no MTRRs,
       and a guest under KVM would otherwise run with all of RAM uncached. */
    mov eax, 1
    cpuid
    test edx, 0x1000                /* CPUID.1:EDX.MTRR */
    jz .Lno_mtrr
    mov ecx, 0x2FF                  /* IA32_MTRR_DEF_TYPE */
    mov eax, 0x806                  /* E | type 6 (write-back) */
    xor edx, edx
    wrmsr
.Lno_mtrr:

    /* Paging structures, PAE, long mode, paging. */
    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                    /* CR4.PAE */
    mov cr4, eax
    mov ecx, 0xC0000080             /* IA32_EFER */
    rdmsr
    or eax, 0x100                   /* EFER.LME */
    wrmsr
    mov eax, cr0
    and eax, 0x9FFFFFFF             /* clear CR0.CD and CR0.NW: caches on (qboot leaves the */
                                    /* reset value; under KVM the guest would run uncached) */
    or eax, 0x80000001              /* CR0.PG | CR0.PE */
    mov cr0, eax

    mov eax, offset boot_gdt_ptr
    lgdt [eax]
    push 0x08                       /* 64-bit code segment */
    mov eax, offset pvh_start64
    push eax
    retf

    .code64
pvh_start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov edi, esi                    /* first argument: hvm_start_info (32-bit address) */
    call imds_boot_main
.Lhang:
    cli
    hlt
    jmp .Lhang

    .section .rodata.boot_gdt, "a", @progbits
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: code, 64-bit, present, ring 0 */
    .quad 0x00CF92000000FFFF        /* 0x10: data, writable, present */
boot_gdt_end:
    .p2align 2
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot_tables, "aw", @nobits
    .p2align 12
boot_pml4:
    .skip 0x1000
boot_pdpt:
    .skip 0x1000
boot_pd:
    .skip 0x4000

    .section .bss.boot_stack, "aw", @nobits
    .p2align 12
boot_stack:
    .skip {stack_size}
boot_stack_top:
    "#,
    stack_size = const STACK_SIZE,
);

/// Whether `start_info` (from `ebx` at entry) points at a PVH `hvm_start_info`.
pub fn pvh_magic_ok(start_info: u32) -> bool {
    if start_info == 0 || !start_info.is_multiple_of(4) {
        return false;
    }
    // SAFETY: the address is below 4 GiB (a u32), hence identity-mapped, non-null and 4-byte
    // aligned; QEMU's PVH loader puts the structure in RAM. A volatile read of one u32 of RAM
    // has no side effect.
    let magic = unsafe { core::ptr::read_volatile(start_info as usize as *const u32) };
    magic == HVM_START_MAGIC
}

/// The current stack pointer and the top of the stack it is in (the big stack once
/// [`run_on_big_stack`] switched to it, else the early one), for the panic handler's walk
/// (`unikernel::code_addresses_on_stack`).
pub fn stack_walk_bounds() -> (u64, u64) {
    extern "C" {
        static boot_stack_top: u8;
    }
    let rsp: u64;
    // SAFETY: reads the stack pointer into a register; no memory is touched.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    let top = match STACK_TOP.load(core::sync::atomic::Ordering::Relaxed) {
        // Only the address of the linker symbol is taken, never its contents.
        0 => core::ptr::addr_of!(boot_stack_top) as u64,
        top => top,
    };
    (rsp, top)
}

/// Where a stack of [`BIG_STACK_MIN`]..[`BIG_STACK_MAX`] bytes fits, as `(bottom, top)`: RAM
/// (type 1) of the PVH memory map between [`LOW_RAM_FIRST`] and [`HIGH_RAM_FIRST`] (memory
/// the image does not use), else RAM above `image_end`; the highest such range, and never the
/// pages of the start info or of the map itself, nor the ranges in `keep` (what else the VMM
/// left there: the command line, the module list, the modules). `None` without a memory map
/// (PVH version 0) or without such RAM.
pub fn big_stack(start_info: u32, image_end: u64, keep: &[(u64, u64)]) -> Option<(u64, u64)> {
    let read32 = |at: u64| {
        // SAFETY: `at` is within the start info or its memory map, which QEMU's PVH loader
        // put in identity-mapped RAM below 4 GiB; a volatile read of RAM has no side effect.
        unsafe { core::ptr::read_volatile(at as usize as *const u32) }
    };
    let read64 = |at: u64| u64::from(read32(at)) | (u64::from(read32(at + 4)) << 32);
    let info = u64::from(start_info);
    if read32(info + 4) < 1 {
        return None; // version 0: no memory map
    }
    let (map, entries) = (read64(info + 40), u64::from(read32(info + 48)));
    let avoid = [
        (info & !0xfff, (info + 56 + 0xfff) & !0xfff),
        (map & !0xfff, (map + entries * 24 + 0xfff) & !0xfff),
    ];
    // The highest fitting range below 1 MiB, else above the image.
    let mut found = [None::<(u64, u64)>; 2];
    for e in 0..entries.min(128) {
        let at = map + e * 24;
        if read32(at + 16) != 1 {
            continue;
        }
        let (start, end) = (read64(at), read64(at).saturating_add(read64(at + 8)));
        for (slot, (lo, hi)) in [(LOW_RAM_FIRST, HIGH_RAM_FIRST), (image_end, u64::MAX)]
            .into_iter()
            .enumerate()
        {
            let (mut bottom, mut top) = (start.max(lo), end.min(hi) & !0xf);
            for &(a, b) in avoid.iter().chain(keep) {
                let (a, b) = (a & !0xfff, b.saturating_add(0xfff) & !0xfff);
                if a < top && b > bottom {
                    // Keep the larger side of the avoided range.
                    if top.saturating_sub(b) >= a.saturating_sub(bottom) {
                        bottom = b;
                    } else {
                        top = a;
                    }
                }
            }
            let fits = top > bottom && top - bottom >= BIG_STACK_MIN;
            if fits && found[slot].is_none_or(|(_, t)| top > t) {
                found[slot] = Some((bottom.max(top.saturating_sub(BIG_STACK_MAX)), top));
            }
        }
    }
    found[0].or(found[1])
}

/// The stack the agent runs on (0 until [`run_on_big_stack`]).
static STACK_TOP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static STACK_BOTTOM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The big stack, `(bottom, top)`, once [`run_on_big_stack`] switched to it.
pub fn stack() -> (u64, u64) {
    (
        STACK_BOTTOM.load(core::sync::atomic::Ordering::Relaxed),
        STACK_TOP.load(core::sync::atomic::Ordering::Relaxed),
    )
}

/// Zero the stack `(bottom, top)` (so that `cargo xtask bench boot` can find its high-water
/// mark) and call `main(start_info)` on it. Never returns.
pub fn run_on_big_stack(stack: (u64, u64), main: extern "C" fn(u32) -> !, start_info: u32) -> ! {
    // 64-byte aligned ends for the zeroing below (`top` stays the stack top).
    let (bottom, top) = ((stack.0 + 63) & !63, stack.1);
    STACK_TOP.store(top, core::sync::atomic::Ordering::Relaxed);
    STACK_BOTTOM.store(bottom, core::sync::atomic::Ordering::Relaxed);
    // Zeroed 64 bytes per turn: `write_bytes` (`rep stosq`) costs QEMU's TCG one dispatch per
    // 8 bytes, ~0.7 ms for this stack; the bytes above `top & !63` are the first ones used.
    // SAFETY: `bottom..top` is RAM the memory map reports and nothing else uses (see
    // [`big_stack`]); zeroing it touches nothing of the image. `bottom` and `top & !63` are
    // 64-byte aligned, so the turns end exactly there.
    unsafe {
        core::arch::asm!(
            "jmp 3f",
            "2:",
            "mov qword ptr [{p}], {zero}",
            "mov qword ptr [{p} + 8], {zero}",
            "mov qword ptr [{p} + 16], {zero}",
            "mov qword ptr [{p} + 24], {zero}",
            "mov qword ptr [{p} + 32], {zero}",
            "mov qword ptr [{p} + 40], {zero}",
            "mov qword ptr [{p} + 48], {zero}",
            "mov qword ptr [{p} + 56], {zero}",
            "add {p}, 64",
            "3:",
            "cmp {p}, {end}",
            "jb 2b",
            p = inout(reg) bottom => _,
            end = in(reg) top & !63,
            zero = in(reg) 0u64,
            options(nostack)
        )
    };
    // SAFETY: `top` is the 16-byte aligned end of that RAM: the new stack. `main` never
    // returns, so nothing of the old stack is used again.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {main}",
            "ud2",
            top = in(reg) top,
            main = in(reg) main,
            in("edi") start_info,
            options(noreturn)
        )
    }
}
