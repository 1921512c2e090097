//! Broker mode in the image (cargo feature `broker`): tokens fetched from an OAuth2 authority
//! over TLS 1.3, cached, and served like in issuer mode.
//!
//! The wiring, like the host daemon's: [`BROKER_TASKS`] broker tasks
//! (`imds_agent::broker::task::run`, async fns with their buffers in `.bss`) each own a
//! [`Pipe`]; the network loop's upstream sockets serve the pipes (`Net::poll_upstream`), turned
//! by `imds_agent::broker::runner::Runner` in the image's one loop (`unikernel::serve`).

use core::cell::RefCell;
use core::future::Future;
use core::mem::MaybeUninit;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::{Console, MachineClock, MachineEntropy};
use embassy_futures::join::join_array;
use imds_agent::broker::pipe::Pipe;
use imds_agent::broker::runner::Runner;
use imds_agent::broker::task::{self, TaskBuffers};
use imds_agent::config::{AuthorityConfig, NetworkConfig};
use imds_agent::limits::BROKER_TASKS;
use imds_agent::Agent;
use imds_hal::text::Text;

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

/// Say where tokens come from.
pub fn announce(authority: &AuthorityConfig, network: Option<&NetworkConfig>, log: &mut Console) {
    log.put("imds-agent: broker mode: ")
        .put(authority.token_url.as_str())
        .put(" via ");
    match authority.address {
        Some(a) => log.socket(a).put(" (configured address)"),
        None if authority.host.parse::<core::net::Ipv4Addr>().is_ok() => {
            log.put(&authority.host).put(" (address)")
        }
        None if network.is_some() => {
            log.put("DNS -- but a static network config has no DNS server: set authority.address")
        }
        None => log.put("DNS (servers from DHCP)"),
    }
    .end();
}

/// The broker tasks' pipes and one future that runs every task (`task::run`, buffers in
/// `.bss`). Once per boot.
pub fn tasks<'a>(
    agent: &'a RefCell<Agent>,
    authority: &'a AuthorityConfig,
    clock: &'a MachineClock,
) -> (
    &'static [Pipe; BROKER_TASKS],
    impl Future<Output = [(); BROKER_TASKS]> + 'a,
) {
    let (pipes, buffers) = broker_memory();
    let mut bufs = buffers.iter_mut();
    let tasks: [_; BROKER_TASKS] = core::array::from_fn(|i| {
        let Some(b) = bufs.next() else {
            unreachable!("one buffer per task")
        };
        task::run(agent, authority, &pipes[i], clock, MachineEntropy::new(), b)
    });
    (pipes, join_array(tasks))
}

/// The runner of the tasks (none without an authority), announced on the log.
pub fn runner<'a, F: Future>(
    pipes: Option<&'a [Pipe; BROKER_TASKS]>,
    tasks: Pin<&'a mut Option<F>>,
    log: &mut Console,
) -> Option<Runner<'a, F>> {
    let runner = Runner::new(tasks.as_pin_mut()?, pipes?);
    log.put("imds-agent: broker: ")
        .dec(BROKER_TASKS as u64)
        .put(" tasks (")
        .dec(runner.tasks_size() as u64)
        .put(" bytes of futures, ")
        .dec(core::mem::size_of::<[TaskBuffers; BROKER_TASKS]>() as u64)
        .put(" of buffers)")
        .end();
    Some(runner)
}
