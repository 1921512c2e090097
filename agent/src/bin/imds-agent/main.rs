//! The host daemon: the imds-agent core on std sockets, one thread, an event loop (mio).
//!
//! `imds-agent --config FILE [--listen ADDR:PORT] [--legacy-listen ADDR:PORT|off]`, and
//! `--check-config FILE`, `--init-config FILE`, `--version`, `--help` (see [`HELP`]).
//! Under systemd: readiness on `$NOTIFY_SOCKET`, log priorities for the journal ([`journal`]).

mod arc;
mod cli;
mod journal;
mod upstream;

use imds_agent::broker::pipe::Pipe;
use imds_agent::broker::runner::Runner;
use imds_agent::broker::task::{self, TaskBuffers};
use imds_agent::config::{AuthorityConfig, Config, HostsConfig};
use imds_agent::connection::{Connection, Listener};
use imds_agent::limits::{BROKER_TASKS, CONFIG_MAX, HOST_MAX_CONNECTIONS};
use imds_agent::Agent;
use imds_hal::host::{FileConfig, HostClock, HostEntropy};
use imds_hal::{Clock, ConfigSource};
use journal::{notify, say, Level, Log};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use sd_notify::NotifyState;
use std::cell::RefCell;
use std::future::Future;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

const IMDS: Token = Token(0);
const LEGACY: Token = Token(1);
const SIGNALS: Token = Token(2);
const APP_SERVICE: Token = Token(3);
const AZURE_ML: Token = Token(4);
const ARC: Token = Token(5);
const FIRST_CONN: usize = 16;

const USAGE: &str =
    "usage: imds-agent --config FILE [--listen ADDR:PORT] [--legacy-listen ADDR:PORT|off]\n\
       imds-agent --check-config FILE | --init-config FILE | --version | --help";

const HELP: &str = "\
imds-agent: an Azure-compatible IMDS managed-identity token endpoint (host daemon)

usage: imds-agent --config FILE [--listen ADDR:PORT] [--legacy-listen ADDR:PORT|off]
       imds-agent --check-config FILE | --init-config FILE | --version | --help

  -c, --config FILE                 serve with this configuration (JSON)
      --listen ADDR:PORT            IMDS listener, instead of the config's listen.imds
      --legacy-listen ADDR:PORT|off legacy (App Service style) listener, or none
      --check-config FILE           validate FILE as at start, print what would be served; exit 0, or 2
      --init-config FILE            write a fresh config (new key, one system-assigned identity,
                                    issuer mode, mode 0600); never overwrites (exit 2)
  -V, --version                     print the version
  -h, --help                        print this help

Under systemd: READY=1/STOPPING=1/STATUS= on $NOTIFY_SOCKET (Type=notify), and log lines
carry journal priorities (<6> info, <4> warning, <3> error) when JOURNAL_STREAM is set.";

enum Action {
    Run,
    Check(PathBuf),
    Init(PathBuf),
    Version,
    Help,
}

struct Args {
    action: Action,
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    legacy: Option<Option<SocketAddr>>,
}

fn parse_args() -> Result<Args, String> {
    let mut action = Action::Run;
    let mut config = None;
    let mut listen = None;
    let mut legacy = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--config" | "-c" => config = Some(value("--config")?.into()),
            "--check-config" => action = Action::Check(value("--check-config")?.into()),
            "--init-config" => action = Action::Init(value("--init-config")?.into()),
            "--version" | "-V" => action = Action::Version,
            "--help" | "-h" => action = Action::Help,
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: `{v}` is not ADDR:PORT"))?,
                );
            }
            "--legacy-listen" => {
                let v = value("--legacy-listen")?;
                legacy =
                    Some(if v == "off" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            format!("--legacy-listen: `{v}` is not ADDR:PORT or off")
                        })?)
                    });
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if matches!(action, Action::Run) && config.is_none() {
        return Err(format!("--config is required\n{USAGE}"));
    }
    Ok(Args {
        action,
        config,
        listen,
        legacy,
    })
}

/// Read and validate the configuration, as at start. Err: the message (without the program
/// name) that the daemon prints before it exits with status 2.
fn load_config(path: &Path) -> Result<Config, String> {
    let mut doc = vec![0u8; CONFIG_MAX];
    let mut source = FileConfig {
        path: path.to_path_buf(),
    };
    let config = match source.read_config(&mut doc) {
        Ok(bytes) => Config::parse(bytes),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // The document holds the private key: wipe it.
    zeroize::Zeroize::zeroize(&mut doc[..]);
    config.map_err(|e| format!("{}: {e}", path.display()))
}

struct Conn {
    stream: TcpStream,
    state: Box<Connection>,
    /// The socket may hold unread bytes: set by a readable event, cleared by a short read
    /// (the kernel buffer was drained, and edge-triggered epoll reports the next arrival) or
    /// by WouldBlock. Saves the `recv` per request that would only return EAGAIN.
    readable: bool,
    /// The peer's FIN was reported (EPOLLRDHUP): read until 0 rather than stop at a short read.
    hup: bool,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            say(Level::Err, &format!("imds-agent: {e}"));
            return ExitCode::from(2);
        }
    };
    let path = match args.action {
        Action::Version => {
            println!("imds-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Help => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Action::Init(path) => {
            return match cli::init_config(&path) {
                Ok(()) => {
                    println!("imds-agent: wrote {} (mode 0600)", path.display());
                    ExitCode::SUCCESS
                }
                Err((code, e)) => {
                    say(Level::Err, &format!("imds-agent: {e}"));
                    ExitCode::from(code)
                }
            };
        }
        Action::Check(ref path) => path.clone(),
        Action::Run => args.config.clone().expect("checked by parse_args"),
    };
    let config = match load_config(&path) {
        Ok(c) => c,
        Err(e) => {
            say(Level::Err, &format!("imds-agent: {e}"));
            return ExitCode::from(2);
        }
    };
    let imds_addr = args.listen.unwrap_or(config.listen.imds);
    let legacy_addr = args.legacy.unwrap_or(config.listen.legacy);
    if let Action::Check(_) = args.action {
        print!("{}", cli::describe(&path, &config, imds_addr, legacy_addr));
        return ExitCode::SUCCESS;
    }
    let authority = config.authority.clone();
    let hosts = config.hosts.clone();
    let agent = Agent::new(config);
    match run(agent, authority, imds_addr, legacy_addr, &hosts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(Level::Err, &format!("imds-agent: {e}"));
            ExitCode::from(1)
        }
    }
}

fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}")))
}

fn run(
    agent: Agent,
    authority: Option<AuthorityConfig>,
    imds_addr: SocketAddr,
    legacy_addr: Option<SocketAddr>,
    hosts: &HostsConfig,
) -> io::Result<()> {
    let clock = HostClock::new();
    let mut entropy = HostEntropy::default();
    {
        // Refuse to start without a secure entropy source.
        let mut probe = [0u8; 16];
        imds_hal::Entropy::fill(&mut entropy, &mut probe)
            .map_err(|e| io::Error::other(format!("fatal: {e}; refusing to start")))?;
    }
    let mut poll = Poll::new()?;
    let mut imds = bind(imds_addr, "imds")?;
    poll.registry()
        .register(&mut imds, IMDS, Interest::READABLE)?;
    let legacy = match legacy_addr {
        Some(a) => {
            let mut l = bind(a, "legacy")?;
            poll.registry()
                .register(&mut l, LEGACY, Interest::READABLE)?;
            Some(l)
        }
        None => None,
    };
    // The other Azure hosts' endpoints (issue 13): one listener each.
    let mut host_listeners: Vec<(Token, Listener, TcpListener)> = Vec::new();
    for (tok, kind, what, endpoint) in [
        (
            APP_SERVICE,
            Listener::AppService,
            "app_service",
            &hosts.app_service,
        ),
        (AZURE_ML, Listener::AzureMl, "azure_ml", &hosts.azure_ml),
    ] {
        if let Some(e) = endpoint {
            let mut l = bind(e.listen, what)?;
            poll.registry().register(&mut l, tok, Interest::READABLE)?;
            host_listeners.push((tok, kind, l));
        }
    }
    if let Some(a) = &hosts.arc {
        arc::prepare(&a.key_dir)?;
        let mut l = bind(a.listen, "arc")?;
        poll.registry().register(&mut l, ARC, Interest::READABLE)?;
        host_listeners.push((ARC, Listener::Arc, l));
    }
    let mut signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;

    let mut log = Log::new();
    let imds_local = imds.local_addr()?;
    let legacy_local = legacy.as_ref().and_then(|l| l.local_addr().ok());
    log.line(
        Level::Info,
        format_args!(
            "imds-agent: listening imds={} legacy={} identities={} mode={} kid={}",
            imds_local,
            legacy_local
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            agent.identities().len(),
            match &authority {
                Some(a) => format!("broker({})", a.token_url),
                None => "issuer".into(),
            },
            agent.issuer().map(|i| i.kid()).unwrap_or("-"),
        ),
    );
    for (_, kind, l) in &host_listeners {
        log.line(
            Level::Info,
            format_args!(
                "imds-agent: listening {}={}",
                match kind {
                    Listener::AppService => "app_service",
                    Listener::AzureMl => "azure_ml",
                    _ => "arc",
                },
                l.local_addr()?
            ),
        );
    }
    log.flush();
    let status = format!(
        "serving {} identities on {}{}",
        agent.identities().len(),
        imds_local,
        legacy_local.map(|a| format!(", {a}")).unwrap_or_default()
    );

    // The host's own subnets may ask (unless `allow` is configured).
    let mut agent = agent;
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let (ip, len) = match &iface.addr {
                if_addrs::IfAddr::V4(a) => (std::net::IpAddr::V4(a.ip), a.prefixlen),
                if_addrs::IfAddr::V6(a) => (std::net::IpAddr::V6(a.ip), a.prefixlen),
            };
            agent
                .guard_mut()
                .add_own_subnet(imds_agent::guard::Cidr::new(ip, len));
        }
    }

    // Broker mode: the task futures, their pipes and sockets.
    let agent = RefCell::new(agent);
    let pipes: Vec<Pipe> = (0..BROKER_TASKS).map(|_| Pipe::new()).collect();
    let mut slots: Vec<upstream::Slot> = (0..BROKER_TASKS)
        .map(|_| upstream::Slot::default())
        .collect();
    let mut buffers: Vec<Box<TaskBuffers>> = (0..BROKER_TASKS)
        .map(|_| Box::new(TaskBuffers::new()))
        .collect();
    let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    if let Some(authority) = authority.as_ref() {
        for (pipe, bufs) in pipes.iter().zip(buffers.iter_mut()) {
            tasks.push(Box::pin(task::run(
                &agent,
                authority,
                pipe,
                &clock,
                HostEntropy::default(),
                bufs,
            )));
        }
    }
    let brokered = !tasks.is_empty();
    // One future that polls every task; the runner turns it with the pipes.
    let mut all_tasks = std::pin::pin!(std::future::poll_fn(|cx| {
        for t in tasks.iter_mut() {
            let _ = t.as_mut().poll(cx);
        }
        std::task::Poll::<()>::Pending
    }));
    let mut runner = brokered.then(|| Runner::new(all_tasks.as_mut(), &pipes));

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut live = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut last_sweep = clock.monotonic_us();
    // Every listener is bound and listening (the kernel completes handshakes from here on)
    // and the loop below accepts: tell systemd.
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    loop {
        // While fetches run, turn often: the tasks' timers and parked requests need it.
        let busy = agent.borrow().fetching()
            || runner.as_ref().is_some_and(|r| r.connected())
            || conns.iter().flatten().any(|c| c.state.is_parked());
        let timeout = if busy {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(500)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => {
                    if let Some(sig) = signals.pending().next() {
                        notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
                        log.line(
                            Level::Info,
                            format_args!("imds-agent: signal {sig}, shutting down"),
                        );
                        arc::clear(&mut agent.borrow_mut());
                        log.flush();
                        return Ok(());
                    }
                }
                tok @ (IMDS | LEGACY | APP_SERVICE | AZURE_ML | ARC) => {
                    let (listener, kind) = if tok == IMDS {
                        (&imds, Listener::Imds)
                    } else if tok == LEGACY {
                        match legacy.as_ref() {
                            Some(l) => (l, Listener::Legacy),
                            None => continue,
                        }
                    } else {
                        match host_listeners.iter().find(|(t, _, _)| *t == tok) {
                            Some((_, kind, l)) => (l, *kind),
                            None => continue,
                        }
                    };
                    loop {
                        let (mut stream, peer) = match listener.accept() {
                            Ok(s) => s,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(_) => break, // e.g. EMFILE: try again on the next event
                        };
                        if live >= HOST_MAX_CONNECTIONS
                            && !make_room(
                                &mut conns,
                                &mut free,
                                &mut live,
                                &poll,
                                &mut agent.borrow_mut(),
                            )
                        {
                            // Every connection is mid-request: refuse this one.
                            drop(stream);
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let slot = free.pop().unwrap_or_else(|| {
                            conns.push(None);
                            conns.len() - 1
                        });
                        if poll
                            .registry()
                            .register(
                                &mut stream,
                                Token(FIRST_CONN + slot),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .is_err()
                        {
                            free.push(slot);
                            continue;
                        }
                        let mut state = Box::new(Connection::new());
                        state.reset(kind, peer.ip(), clock.monotonic_us());
                        conns[slot] = Some(Conn {
                            stream,
                            state,
                            readable: true,
                            hup: false,
                        });
                        live += 1;
                        let mut a = agent.borrow_mut();
                        drive(
                            &mut conns,
                            slot,
                            &mut a,
                            &clock,
                            &mut entropy,
                            &mut log,
                            &poll,
                            &mut free,
                            &mut live,
                        );
                    }
                }
                Token(t) if t >= FIRST_CONN => {
                    let slot = t - FIRST_CONN;
                    if let Some(Some(c)) = conns.get_mut(slot) {
                        c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        c.hup |= ev.is_read_closed();
                    }
                    let mut a = agent.borrow_mut();
                    drive(
                        &mut conns,
                        slot,
                        &mut a,
                        &clock,
                        &mut entropy,
                        &mut log,
                        &poll,
                        &mut free,
                        &mut live,
                    );
                }
                Token(_) => {} // upstream sockets: driven below on every turn
            }
        }
        if let Some(runner) = runner.as_mut() {
            // Let the tasks take new jobs, move their bytes, and let them run again.
            runner.turn(|pipes| {
                let mut progress = false;
                for (i, (pipe, slot)) in pipes.iter().zip(slots.iter_mut()).enumerate() {
                    progress |= upstream::drive(pipe, slot, i, poll.registry());
                }
                progress
            });
            // Parked requests: answer those whose fetch ended.
            for slot in 0..conns.len() {
                if conns[slot].as_ref().is_some_and(|c| c.state.is_parked()) {
                    let mut a = agent.borrow_mut();
                    drive(
                        &mut conns,
                        slot,
                        &mut a,
                        &clock,
                        &mut entropy,
                        &mut log,
                        &poll,
                        &mut free,
                        &mut live,
                    );
                }
            }
            agent.borrow_mut().drain_events(&mut log);
        }
        let now = clock.monotonic_us();
        // Azure Arc: expired key files go.
        for failure in arc::sync(&mut agent.borrow_mut(), now) {
            log.line(Level::Warning, format_args!("imds-agent: arc: {failure}"));
        }
        if now.saturating_sub(last_sweep) > 1_000_000 {
            last_sweep = now;
            for slot in 0..conns.len() {
                if conns[slot].as_ref().is_some_and(|c| c.state.timed_out(now)) {
                    close(
                        &mut conns,
                        slot,
                        &poll,
                        &mut free,
                        &mut live,
                        &mut agent.borrow_mut(),
                    );
                }
            }
        }
        log.flush();
    }
}

fn close(
    conns: &mut [Option<Conn>],
    slot: usize,
    poll: &Poll,
    free: &mut Vec<usize>,
    live: &mut usize,
    agent: &mut Agent,
) {
    if let Some(mut c) = conns[slot].take() {
        c.state.abandon(agent);
        let _ = poll.registry().deregister(&mut c.stream);
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        free.push(slot);
        *live -= 1;
    }
}

/// Pool full: close the connection that has waited longest without a complete request
/// (never answered first; then idle keep-alive or a slow request head:
/// `Connection::eviction_key`). False if every
/// connection is busy for its client.
fn make_room(
    conns: &mut [Option<Conn>],
    free: &mut Vec<usize>,
    live: &mut usize,
    poll: &Poll,
    agent: &mut Agent,
) -> bool {
    let victim = conns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.as_ref()
                .and_then(|c| c.state.eviction_key())
                .map(|k| (i, k))
        })
        .min_by_key(|&(_, k)| k)
        .map(|(i, _)| i);
    match victim {
        Some(slot) => {
            close(conns, slot, poll, free, live, agent);
            true
        }
        None => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn drive(
    conns: &mut [Option<Conn>],
    slot: usize,
    agent: &mut Agent,
    clock: &HostClock,
    entropy: &mut HostEntropy,
    log: &mut Log,
    poll: &Poll,
    free: &mut Vec<usize>,
    live: &mut usize,
) {
    let Some(c) = conns.get_mut(slot).and_then(|c| c.as_mut()) else {
        return;
    };
    let mut broken = false;
    loop {
        let mut progress = false;
        // Read while there is room.
        while c.readable {
            let space = c.state.rx_space();
            let room = space.len();
            if room == 0 {
                break;
            }
            match c.stream.read(space) {
                Ok(0) => {
                    c.state.rx_closed();
                    c.readable = false;
                    break;
                }
                Ok(n) => {
                    c.state.rx_commit(n, clock.monotonic_us());
                    progress = true;
                    if n < room && !c.hup {
                        c.readable = false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            break;
        }
        c.state.process(agent, clock, entropy, log);
        // Azure Arc: a challenge's key file exists before its 401 is sent.
        for failure in arc::sync(agent, clock.monotonic_us()) {
            log.line(Level::Warning, format_args!("imds-agent: arc: {failure}"));
        }
        // Write what is pending.
        while !c.state.tx_pending().is_empty() {
            match c.stream.write(c.state.tx_pending()) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => {
                    c.state.tx_consume(n);
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken || c.state.wants_close() || !progress {
            break;
        }
    }
    if broken || c.state.wants_close() {
        close(conns, slot, poll, free, live, agent);
    }
}
