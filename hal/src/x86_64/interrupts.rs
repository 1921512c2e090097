//! Interrupts, for two things only: reporting CPU exceptions on the console (instead of a
//! silent triple fault), and sleeping (`hlt`) until a local APIC timer deadline while the
//! network is idle, so that an idle guest does not burn a host CPU.
//!
//! The legacy PICs are masked, the IOAPIC is left alone (all its entries are masked at reset),
//! and the NIC is polled: the only interrupt ever enabled is the LAPIC timer, and interrupts are
//! only enabled inside [`LapicTimer::halt_us`] (`sti; hlt; cli`).

use crate::text::Text;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::clock::rdtsc;
use super::exit::exit;
use super::port::outb;
use super::serial::Serial;

/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// Vector of LAPIC spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
const LAPIC_EOI: u64 = 0xB0;
const LAPIC_SVR: u64 = 0xF0;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_TIMER_INITIAL: u64 = 0x380;
const LAPIC_TIMER_CURRENT: u64 = 0x390;
const LAPIC_TIMER_DIVIDE: u64 = 0x3E0;
const LVT_MASKED: u32 = 1 << 16;
/// Calibration window of the LAPIC timer against the TSC.
const LAPIC_CALIBRATION_US: u64 = 500;

/// Guest exit code used when a CPU exception is reported.
static EXCEPTION_EXIT_CODE: AtomicU8 = AtomicU8::new(1);
/// Address of the LAPIC EOI register, for the timer stub.
#[no_mangle]
static IMDS_LAPIC_EOI: AtomicU64 = AtomicU64::new(0xFEE0_0000 + LAPIC_EOI);

core::arch::global_asm!(
    r#"
    .section .text.imds_interrupts, "ax", @progbits
    .code64
imds_exc_0:
    push 0
    push 0
    jmp imds_exc_common
imds_exc_1:
    push 0
    push 1
    jmp imds_exc_common
imds_exc_2:
    push 0
    push 2
    jmp imds_exc_common
imds_exc_3:
    push 0
    push 3
    jmp imds_exc_common
imds_exc_4:
    push 0
    push 4
    jmp imds_exc_common
imds_exc_5:
    push 0
    push 5
    jmp imds_exc_common
imds_exc_6:
    push 0
    push 6
    jmp imds_exc_common
imds_exc_7:
    push 0
    push 7
    jmp imds_exc_common
imds_exc_8:
    push 8
    jmp imds_exc_common
imds_exc_9:
    push 0
    push 9
    jmp imds_exc_common
imds_exc_10:
    push 10
    jmp imds_exc_common
imds_exc_11:
    push 11
    jmp imds_exc_common
imds_exc_12:
    push 12
    jmp imds_exc_common
imds_exc_13:
    push 13
    jmp imds_exc_common
imds_exc_14:
    push 14
    jmp imds_exc_common
imds_exc_15:
    push 0
    push 15
    jmp imds_exc_common
imds_exc_16:
    push 0
    push 16
    jmp imds_exc_common
imds_exc_17:
    push 17
    jmp imds_exc_common
imds_exc_18:
    push 0
    push 18
    jmp imds_exc_common
imds_exc_19:
    push 0
    push 19
    jmp imds_exc_common
imds_exc_20:
    push 0
    push 20
    jmp imds_exc_common
imds_exc_21:
    push 21
    jmp imds_exc_common
imds_exc_22:
    push 0
    push 22
    jmp imds_exc_common
imds_exc_23:
    push 0
    push 23
    jmp imds_exc_common
imds_exc_24:
    push 0
    push 24
    jmp imds_exc_common
imds_exc_25:
    push 0
    push 25
    jmp imds_exc_common
imds_exc_26:
    push 0
    push 26
    jmp imds_exc_common
imds_exc_27:
    push 0
    push 27
    jmp imds_exc_common
imds_exc_28:
    push 0
    push 28
    jmp imds_exc_common
imds_exc_29:
    push 29
    jmp imds_exc_common
imds_exc_30:
    push 30
    jmp imds_exc_common
imds_exc_31:
    push 0
    push 31
    jmp imds_exc_common
imds_exc_common:
    mov rdi, rsp                    /* &ExceptionFrame */
    and rsp, -16
    call imds_hal_exception
    ud2

    .global imds_timer_isr
imds_timer_isr:
    push rax
    mov rax, qword ptr [rip + IMDS_LAPIC_EOI]
    mov dword ptr [rax], 0
    pop rax
    iretq

    .global imds_spurious_isr
imds_spurious_isr:
    iretq

    .section .rodata.imds_exc_table, "a", @progbits
    .p2align 3
    .global imds_exc_table
imds_exc_table:
    .quad imds_exc_0
    .quad imds_exc_1
    .quad imds_exc_2
    .quad imds_exc_3
    .quad imds_exc_4
    .quad imds_exc_5
    .quad imds_exc_6
    .quad imds_exc_7
    .quad imds_exc_8
    .quad imds_exc_9
    .quad imds_exc_10
    .quad imds_exc_11
    .quad imds_exc_12
    .quad imds_exc_13
    .quad imds_exc_14
    .quad imds_exc_15
    .quad imds_exc_16
    .quad imds_exc_17
    .quad imds_exc_18
    .quad imds_exc_19
    .quad imds_exc_20
    .quad imds_exc_21
    .quad imds_exc_22
    .quad imds_exc_23
    .quad imds_exc_24
    .quad imds_exc_25
    .quad imds_exc_26
    .quad imds_exc_27
    .quad imds_exc_28
    .quad imds_exc_29
    .quad imds_exc_30
    .quad imds_exc_31
"#
);

extern "C" {
    static imds_exc_table: [u64; 32];
    fn imds_timer_isr();
    fn imds_spurious_isr();
}

/// What the exception stubs push, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        _ => "reserved",
    }
}

#[no_mangle]
extern "C" fn imds_hal_exception(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 (the faulting address of the last page fault) has no side effects.
    unsafe { core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let mut log = Serial::com1();
    log.put("imds-agent: fatal: CPU exception ")
        .dec(frame.vector)
        .put(" (")
        .put(exception_name(frame.vector))
        .put(") at rip ")
        .hex(frame.rip)
        .put(", error code ")
        .hex(frame.error_code)
        .put(", rsp ")
        .hex(frame.rsp)
        .put(", cr2 ")
        .hex(cr2)
        .end();
    exit(EXCEPTION_EXIT_CODE.load(Ordering::Relaxed))
}

#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: IdtEntry = IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt_gate(handler: u64, selector: u16) -> IdtEntry {
        IdtEntry {
            offset_low: handler as u16,
            selector,
            ist: 0,
            type_attr: 0x8E, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([IdtEntry; 256]);

static mut IDT: Idt = Idt([IdtEntry::MISSING; 256]);

#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Install the IDT: the 32 CPU exceptions print what happened and leave QEMU with guest exit
/// code `exit_code`; the LAPIC timer and spurious vectors return at once. Also masks both
/// legacy PICs. Interrupts stay disabled. Call once, early.
pub fn init(exit_code: u8) {
    EXCEPTION_EXIT_CODE.store(exit_code, Ordering::Relaxed);
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    let idt = &raw mut IDT;
    // SAFETY: interrupts are disabled and this is the only code touching IDT (called once at
    // boot, single CPU), so the writes cannot race with the CPU using the table; the stub
    // addresses come from the table the assembly above defines.
    unsafe {
        for (v, &stub) in imds_exc_table.iter().enumerate() {
            (*idt).0[v] = IdtEntry::interrupt_gate(stub, cs);
        }
        (*idt).0[usize::from(TIMER_VECTOR)] =
            IdtEntry::interrupt_gate(imds_timer_isr as *const () as usize as u64, cs);
        (*idt).0[usize::from(SPURIOUS_VECTOR)] =
            IdtEntry::interrupt_gate(imds_spurious_isr as *const () as usize as u64, cs);
        let pointer = IdtPointer {
            limit: (core::mem::size_of::<Idt>() - 1) as u16,
            base: idt as u64,
        };
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags));
        // Mask every line of both 8259 PICs (ports 0x21 / 0xA1, the interrupt mask registers).
        outb(0x21, 0xFF);
        outb(0xA1, 0xFF);
    }
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called for IA32_APIC_BASE, which exists when CPUID reports an APIC.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(hi) << 32 | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: only called for IA32_APIC_BASE with its own value plus the global enable bit.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// The local APIC timer, one-shot, for sleeping.
#[derive(Debug)]
pub struct LapicTimer {
    base: u64,
    ticks_per_ms: u64,
}

/// The LAPIC timer counting down, masked, from its largest count since [`LapicTimer::start`]
/// (at TSC `tsc`): the first end of its calibration.
#[derive(Debug, Clone, Copy)]
pub struct LapicStart {
    /// The LAPIC's MMIO base (below 4 GiB).
    pub base: u64,
    /// The TSC when the count began.
    pub tsc: u64,
}

impl LapicTimer {
    /// Enable the local APIC and start its timer counting (masked: it raises nothing), so that
    /// [`LapicTimer::init`] can calibrate it over the time in between instead of waiting.
    /// `None` when the CPU has no APIC. Call after [`init`].
    pub fn start() -> Option<LapicStart> {
        let apic = core::arch::x86_64::__cpuid(1).edx & (1 << 9) != 0;
        if !apic {
            return None;
        }
        let msr = rdmsr(IA32_APIC_BASE);
        if msr & APIC_GLOBAL_ENABLE == 0 {
            wrmsr(IA32_APIC_BASE, msr | APIC_GLOBAL_ENABLE);
        }
        let base = msr & 0x000F_FFFF_FFFF_F000;
        if base >= 1 << 32 {
            return None; // outside the identity map
        }
        IMDS_LAPIC_EOI.store(base + LAPIC_EOI, Ordering::Relaxed);
        let timer = LapicTimer {
            base,
            ticks_per_ms: 0,
        };
        timer.write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR)); // software enable
        timer.write(LAPIC_TIMER_DIVIDE, 0b1011); // divide by 1
        timer.write(LAPIC_LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
        timer.write(LAPIC_TIMER_INITIAL, u32::MAX);
        Some(LapicStart { base, tsc: rdtsc() })
    }

    /// The timer of `start`, measured against the TSC (`tsc_hz`) over the time since then (at
    /// least 0.5 ms: the rest is waited for; a count that ran out is measured again). `None`
    /// when the timer does not count.
    pub fn init(start: LapicStart, tsc_hz: u64) -> Option<LapicTimer> {
        if tsc_hz == 0 {
            return None;
        }
        let mut timer = LapicTimer {
            base: start.base,
            ticks_per_ms: 0,
        };
        let window = tsc_hz / 1_000_000 * LAPIC_CALIBRATION_US;
        let mut from = start.tsc;
        let (elapsed, tsc_elapsed) = loop {
            while rdtsc().wrapping_sub(from) < window {
                core::hint::spin_loop();
            }
            let current = timer.read(LAPIC_TIMER_CURRENT);
            let tsc_elapsed = rdtsc().wrapping_sub(from);
            if current != 0 {
                break (u64::from(u32::MAX - current), tsc_elapsed);
            }
            // Counted out (over seconds): once more, over the minimum window.
            timer.write(LAPIC_TIMER_INITIAL, u32::MAX);
            from = rdtsc();
        };
        timer.write(LAPIC_TIMER_INITIAL, 0);
        timer.ticks_per_ms = elapsed * (tsc_hz / 1000) / tsc_elapsed.max(1);
        (timer.ticks_per_ms > 0).then_some(timer)
    }

    /// Timer ticks per millisecond.
    pub fn ticks_per_ms(&self) -> u64 {
        self.ticks_per_ms
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: `base` is the LAPIC's MMIO page (below 4 GiB, identity-mapped) and `reg` one
        // of its registers; LAPIC registers are 32 bits wide at 16-byte aligned offsets.
        unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) };
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: as in `write`; reading these registers has no side effects.
        unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
    }

    /// Sleep for up to `us` microseconds: `hlt` until the timer (or any other interrupt).
    pub fn halt_us(&self, us: u64) {
        let ticks = (us.saturating_mul(self.ticks_per_ms) / 1000).min(u64::from(u32::MAX));
        if ticks == 0 {
            return;
        }
        self.write(LAPIC_LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot, unmasked
        self.write(LAPIC_TIMER_INITIAL, ticks as u32);
        // SAFETY: the IDT has handlers for every vector that can fire (the timer, spurious,
        // exceptions); `sti` takes effect after `hlt` begins, so a timer that fired already
        // wakes it at once; interrupts are off again right after.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        self.write(LAPIC_TIMER_INITIAL, 0);
    }
}
