//! The boot sequence: machine backends from `imds-hal`, the agent core from `imds-agent`.

use core::cell::RefCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use imds_agent::config::Config;
use imds_agent::connection::Connection;
use imds_agent::limits::CONFIG_MAX;
use imds_agent::limits::LISTEN_SOCKETS;
use imds_agent::net::{Net, NetMemory, NET_SOCKETS};
use imds_agent::Agent;
use imds_hal::text::Text;
use imds_hal::virtio_net::VirtioNet;
use imds_hal::{Clock, ConfigSourceError};
use smoltcp::iface::SocketStorage;

use crate::arch::{self, exit};
use crate::{exit_code, nap};

/// fw_cfg file whose presence makes the image crash right after boot (see [`crash_test`]).
const PANIC_TEST_FILE: &str = "opt/imds-agent/panic-test";

/// The boot sequence, on the big stack the arch's boot code set up.
pub fn main(boot_info: arch::BootInfo) -> ! {
    let _ = boot_info;
    let mut log = arch::console();
    log.put("imds-agent: unikernel ")
        .put(env!("CARGO_PKG_VERSION"))
        .put(" booting")
        .put(if cfg!(feature = "broker") {
            " (broker)"
        } else {
            ""
        })
        .put(", stack ")
        .hex(arch::stack().0)
        .put("..")
        .hex(arch::stack().1)
        .end();
    // The clock starts here (or the machine stops: no wall clock); on x86 under TCG its PIT
    // calibration window stays open while the config is read and parsed (no busy wait),
    // closed by `arch::clock` below.
    let clock = arch::clock_start(&mut log);
    crash_test();
    #[cfg(feature = "net-floor")]
    crate::net_floor::run(clock, &mut log);
    #[cfg(not(feature = "net-floor"))]
    boot_agent(clock, &mut log);
}

/// The agent's boot, from the started clock: config, clock, NIC, then [`serve`]. Inlined into
/// `main`: as a function of its own it cost the image 192 bytes (measured).
#[inline(always)]
fn boot_agent(clock: arch::ClockStart, log: &mut arch::Console) -> ! {
    #[cfg(feature = "rsa")]
    crate::heap::init();

    let mut entropy = arch::entropy(log);

    let config = load_config(log);
    log.put("imds-agent: config: ")
        .dec(config.identities.len() as u64)
        .put(" identities, tenant ")
        .put(&config.tenant_id)
        .end();
    let clock = arch::clock(clock, log);

    let nic = match arch::nic() {
        Ok(nic) => nic,
        Err(e) => {
            log.put("imds-agent: fatal: network: ");
            e.describe(log);
            log.end();
            exit(exit_code::NIC);
        }
    };
    let mac = nic.mac();
    log.put("imds-agent: virtio-net up, MAC ");
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            log.put(":");
        }
        log.hex2(*b);
    }
    log.put(" (")
        .dec(clock.monotonic_us() / 1000)
        .put(" ms since boot)")
        .end();

    let timer = arch::idle(&clock);
    if timer.is_none() {
        log.put("imds-agent: no usable idle timer: polling without pause")
            .end();
    }
    serve(nic, config, timer.as_ref(), &clock, &mut entropy, log)
}

/// Socket buffers and connections of the network loop (~300 KiB), in `.bss`.
static mut NET_MEMORY: MaybeUninit<NetMemory<'static>> = MaybeUninit::uninit();
static NET_MEMORY_TAKEN: AtomicBool = AtomicBool::new(false);

/// The network memory, initialised in place (building it on the stack and moving it would
/// cost twice its size in stack). Once per boot.
fn net_memory() -> &'static mut NetMemory<'static> {
    assert!(
        !NET_MEMORY_TAKEN.swap(true, Ordering::AcqRel),
        "network memory taken twice"
    );
    let memory = (&raw mut NET_MEMORY).cast::<NetMemory<'static>>();
    // SAFETY: the flag above makes this the only access to NET_MEMORY ever. Every field is
    // initialised before the reference is made: the byte buffers are valid as the zeroes the
    // boot code put in `.bss`; sockets, connections and DNS query slots are written in place,
    // element by element, through raw pointers (no reference to uninitialised memory is
    // created).
    unsafe {
        for i in 0..NET_SOCKETS {
            (&raw mut (*memory).sockets[i]).write(SocketStorage::EMPTY);
        }
        for i in 0..LISTEN_SOCKETS {
            (&raw mut (*memory).conns[i]).write(Connection::new());
        }
        #[cfg(feature = "broker")]
        for i in 0..imds_agent::limits::BROKER_TASKS {
            (&raw mut (*memory).dns_queries[i]).write(None);
        }
        &mut *memory
    }
}

/// The agent's place (~160 KiB), in `.bss`: out of [`serve`]'s frame, whose other locals are
/// then reached with short stack offsets.
static mut AGENT_MEMORY: MaybeUninit<RefCell<Agent>> = MaybeUninit::uninit();
static AGENT_MEMORY_TAKEN: AtomicBool = AtomicBool::new(false);

/// The agent's place, once per boot.
fn agent_memory() -> &'static mut MaybeUninit<RefCell<Agent>> {
    assert!(
        !AGENT_MEMORY_TAKEN.swap(true, Ordering::AcqRel),
        "agent memory taken twice"
    );
    let memory = &raw mut AGENT_MEMORY;
    // SAFETY: the flag above makes this the only reference ever made to AGENT_MEMORY; a
    // `MaybeUninit` may be referenced before it is initialised.
    unsafe { &mut *memory }
}

/// The agent, the broker tasks (image built with `broker`, config with an `authority`) and
/// the network loop, forever. One loop turn: the network poll (HTTP connections, parked
/// requests retried); in broker mode the tasks and their pipes ([`imds_agent::broker::runner`])
/// and the agent's log lines; then a nap if nothing is moving. The agent (~160 KiB) lives in
/// this never returning frame of the boot stack; the network memory in a static.
fn serve(
    mut nic: VirtioNet,
    config: Config,
    timer: Option<&arch::Idle>,
    clock: &arch::MachineClock,
    entropy: &mut arch::MachineEntropy,
    log: &mut arch::Console,
) -> ! {
    let network = config.network;
    #[cfg(feature = "broker")]
    let authority = config.authority.clone();
    #[cfg(feature = "broker")]
    if let Some(authority) = authority.as_ref() {
        crate::broker::announce(authority, network.as_ref(), log);
    }
    let mac = nic.mac();
    let mut net = Net::new(
        &mut nic,
        mac,
        network.as_ref(),
        net_memory(),
        clock,
        entropy,
        log,
    );
    let agent: &RefCell<Agent> = agent_memory().write(RefCell::new(Agent::new(config)));
    #[cfg(feature = "broker")]
    let (pipes, tasks) = authority
        .as_ref()
        .map(|authority| crate::broker::tasks(agent, authority, clock))
        .unzip();
    #[cfg(feature = "broker")]
    let mut tasks = core::pin::pin!(tasks);
    #[cfg(feature = "broker")]
    let mut runner = crate::broker::runner(pipes, tasks.as_mut(), log);
    let mut last_busy_us = clock.monotonic_us();
    loop {
        let status = net.poll(&mut nic, &mut agent.borrow_mut(), clock, entropy, log);
        if let Some(change) = status.address_change {
            // The agent's own subnet may ask for tokens (unless `allow` is configured).
            change.apply_to(agent.borrow_mut().guard_mut());
        }
        #[cfg(not(feature = "broker"))]
        let working = false;
        #[cfg(feature = "broker")]
        let working = match runner.as_mut() {
            Some(runner) => {
                let moved = runner.turn(|pipes| net.poll_upstream(pipes, log));
                agent.borrow_mut().drain_events(log);
                // A fetch, an upstream connection or a waiting client: keep turning (the
                // tasks' timers and the parked requests are polled, not woken).
                moved || agent.borrow().fetching() || runner.connected() || net.has_parked()
            }
            None => false,
        };
        let now_us = clock.monotonic_us();
        if status.busy || working {
            last_busy_us = now_us;
            continue;
        }
        nap::when_quiet(timer, now_us, last_busy_us, status.next_in);
    }
}

/// Test hook: an fw_cfg file [`PANIC_TEST_FILE`] makes the image fail on purpose: with the
/// content `ud2`, by a CPU exception (invalid opcode); on aarch64 with `stack-overflow`, by
/// overflowing the stack into its guard block; with anything else, by a Rust panic.
fn crash_test() {
    let mut buf = [0u8; 16];
    match arch::test_file(PANIC_TEST_FILE, &mut buf) {
        Err(ConfigSourceError::Missing) => {}
        Ok(content) if content.starts_with(b"ud2") => arch::raise_cpu_exception(),
        #[cfg(target_arch = "aarch64")]
        Ok(content) if content.starts_with(b"stack-overflow") => overflow_the_stack(),
        // A plain string: the panic handler prints it without formatting.
        _ => panic!("requested by fw_cfg file opt/imds-agent/panic-test"),
    }
}

/// Test hook (aarch64, whose stack lies above an unmapped guard block): recurse, 1 KiB a
/// frame, until the stack runs into the guard; the exception reporter stops the machine.
#[cfg(target_arch = "aarch64")]
fn overflow_the_stack() -> ! {
    fn down(depth: u64) -> u64 {
        let mut frame = [0u8; 1024];
        frame[0] = depth as u8;
        core::hint::black_box(&mut frame);
        if core::hint::black_box(depth) == u64::MAX {
            return 0;
        }
        down(depth + 1) + u64::from(frame[1])
    }
    core::hint::black_box(down(0));
    exit(exit_code::PANIC)
}

/// Read and parse the configuration, or stop the machine saying why.
fn load_config(log: &mut arch::Console) -> Config {
    let mut buf = [0u8; CONFIG_MAX];
    let doc = arch::config(&mut buf, log);
    match Config::parse(doc) {
        Ok(config) => config,
        Err(e) => {
            log.put("imds-agent: fatal: ");
            e.describe(log);
            log.end();
            exit(exit_code::CONFIG_INVALID);
        }
    }
}

/// How many code addresses the panic line lists.
const PANIC_ADDRESSES: usize = 12;
/// How many stack words the panic handler looks at for code addresses.
const STACK_SCAN_WORDS: usize = 512;

/// The values on the stack, from the stack pointer up (the newest frames first, at most
/// [`STACK_SCAN_WORDS`] words, never past the top of the stack: [`arch::stack_walk_bounds`]),
/// that are addresses in the image's code: return addresses (saved link registers) of the calls
/// that led here, among other words. `addr2line -f -i -C -e` on the `image-syms` build of the
/// same code turns them into functions, files and lines.
fn code_addresses_on_stack(mut each: impl FnMut(u64) -> bool) {
    extern "C" {
        static __text_start: u8;
        static __text_end: u8;
    }
    // Only the addresses of these linker symbols are taken, never their contents.
    let (lo, hi) = (
        core::ptr::addr_of!(__text_start) as u64,
        core::ptr::addr_of!(__text_end) as u64,
    );
    let (sp, top) = arch::stack_walk_bounds();
    let mut at = sp & !7;
    for _ in 0..STACK_SCAN_WORDS {
        if at + 8 > top {
            break;
        }
        // SAFETY: `at` is 8-aligned and between the current stack pointer and the top of the
        // stack it is in (identity-mapped memory the boot code set up): memory of this stack.
        let word = unsafe { core::ptr::read_volatile(at as *const u64) };
        if (lo..hi).contains(&word) && !each(word) {
            break;
        }
        at += 8;
    }
}

/// Prints the code addresses on the stack ([`code_addresses_on_stack`]), not
/// `PanicInfo`: reading it at all keeps every panic site's `fmt::Arguments`, and with them
/// ~40 KB of `core::fmt`, in the image (measured: 151,792 vs 193,328 bytes). Turn the
/// addresses into functions and lines with the `image-syms` build of the same code:
/// `addr2line -f -i -C -e target/<target>/image-syms/imds-unikernel ADDR...`.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    let mut log = arch::console();
    log.put("imds-agent: panic: code addresses on the stack (newest first; addr2line -f -i -C -e <image-syms build>):");
    let mut n = 0;
    code_addresses_on_stack(|a| {
        log.put(" ").hex(a);
        n += 1;
        n < PANIC_ADDRESSES
    });
    log.end();
    arch::exit(exit_code::PANIC)
}
