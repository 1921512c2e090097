//! Broker mode in the image (cargo feature `broker`): tokens fetched from an OAuth2 authority
//! over TLS 1.3, cached, and served like in issuer mode.
//!
//! The wiring, like the host daemon's: [`BROKER_TASKS`] broker tasks
//! (`imds_agent::broker::task::run`, async fns with their buffers in `.bss`) each own a
//! [`Pipe`]; the network loop's upstream sockets serve the pipes (`Net::poll_upstream`). One
//! loop turn: the network poll (HTTP connections, parked requests retried), the tasks polled
//! with a no-op waker, the pipes served, the agent's log lines printed. The machine naps only
//! while nothing is fetched, connected or waiting.

use core::cell::RefCell;
use core::fmt::Write;
use core::future::Future;
use core::mem::MaybeUninit;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Waker};

use embassy_futures::join::join_array;
use imds_agent::broker::pipe::{Pipe, PipeState};
use imds_agent::broker::task::{self, TaskBuffers};
use imds_agent::config::Config;
use imds_agent::limits::BROKER_TASKS;
use imds_agent::net::Net;
use imds_agent::server::Agent;
use imds_hal::x86_64::clock::TscClock;
use imds_hal::x86_64::interrupts::LapicTimer;
use imds_hal::x86_64::rdrand::Rdrand;
use imds_hal::x86_64::serial::Serial;
use imds_hal::x86_64::virtio_net::VirtioNet;
use imds_hal::Clock;

use crate::unikernel::{nap_when_quiet, net_memory};

/// Rounds of "poll the tasks, serve the pipes" per loop turn while bytes keep moving (a TLS
/// flight is several records; the next network poll sends what the last round queued).
const TASK_ROUNDS: usize = 4;

/// The tasks' pipes and buffers (~30 KiB a task): in `.bss`, initialised in place once.
static mut PIPES: MaybeUninit<[Pipe; BROKER_TASKS]> = MaybeUninit::uninit();
static mut TASK_BUFFERS: MaybeUninit<[TaskBuffers; BROKER_TASKS]> = MaybeUninit::uninit();
static BROKER_MEMORY_TAKEN: AtomicBool = AtomicBool::new(false);

/// The pipes and task buffers, initialised in place. Once per boot.
fn broker_memory() -> (
    &'static [Pipe; BROKER_TASKS],
    &'static mut [TaskBuffers; BROKER_TASKS],
) {
    assert!(
        !BROKER_MEMORY_TAKEN.swap(true, Ordering::AcqRel),
        "broker memory taken twice"
    );
    let pipes = (&raw mut PIPES).cast::<[Pipe; BROKER_TASKS]>();
    let bufs = (&raw mut TASK_BUFFERS).cast::<[TaskBuffers; BROKER_TASKS]>();
    // SAFETY: the flag above makes this the only access to PIPES and TASK_BUFFERS ever. Each
    // element is written in place through a raw pointer before any reference to the arrays is
    // made, so no reference to uninitialised memory exists; the single-core guest has no other
    // thread that could observe them.
    unsafe {
        for i in 0..BROKER_TASKS {
            (&raw mut (*pipes)[i]).write(Pipe::new());
            (&raw mut (*bufs)[i]).write(TaskBuffers::new());
        }
        (&*pipes, &mut *bufs)
    }
}

/// The agent, the broker tasks and the network loop, forever.
pub fn serve(
    mut nic: VirtioNet,
    config: Config,
    timer: Option<&LapicTimer>,
    clock: &TscClock,
    entropy: &mut Rdrand,
    log: &mut Serial,
) -> ! {
    let network = config.network;
    let Some(authority) = config.authority.clone() else {
        unreachable!("broker::serve without an authority")
    };
    let _ = write!(
        log,
        "imds-agent: broker mode: {} via ",
        authority.token_url.as_str()
    );
    let _ = match authority.address {
        Some(a) => writeln!(log, "{a} (configured address)"),
        None if authority.host.parse::<core::net::Ipv4Addr>().is_ok() => {
            writeln!(log, "{} (address)", authority.host)
        }
        None if network.is_some() => writeln!(
            log,
            "DNS -- but a static network config has no DNS server: set authority.address"
        ),
        None => writeln!(log, "DNS (servers from DHCP)"),
    };
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
    let agent = RefCell::new(Agent::new(config));
    let (pipes, buffers) = broker_memory();
    let mut bufs = buffers.iter_mut();
    let tasks: [_; BROKER_TASKS] = core::array::from_fn(|i| {
        let Some(b) = bufs.next() else {
            unreachable!("one buffer per task")
        };
        task::run(&agent, &authority, &pipes[i], clock, Rdrand::new(), b)
    });
    let mut tasks = pin!(join_array(tasks));
    let _ = writeln!(
        log,
        "imds-agent: broker: {BROKER_TASKS} tasks ({} bytes of futures, {} of buffers)",
        core::mem::size_of_val(&*tasks),
        core::mem::size_of::<[TaskBuffers; BROKER_TASKS]>()
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut last_busy_us = clock.monotonic_us();
    loop {
        let status = net.poll(&mut nic, &mut agent.borrow_mut(), clock, entropy, log);
        let mut moved = false;
        for _ in 0..TASK_ROUNDS {
            let _ = tasks.as_mut().poll(&mut cx);
            let progress = net.poll_upstream(pipes, log);
            moved |= progress;
            if !progress {
                break;
            }
        }
        agent.borrow_mut().drain_events(log);
        let now_us = clock.monotonic_us();
        // A fetch, an upstream connection or a waiting client: keep turning (the tasks' timers
        // and the parked requests are polled, not woken).
        let working = agent.borrow().fetching()
            || pipes.iter().any(|p| p.state() != PipeState::Idle)
            || net.has_parked();
        if status.busy || moved || working {
            last_busy_us = now_us;
            continue;
        }
        nap_when_quiet(timer, now_us, last_busy_us, status.next_in);
    }
}
