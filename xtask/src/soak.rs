//! `cargo xtask soak [--seconds N] [--abuse-seconds N] [--target daemon|unikernel|both]`
//!
//! (a) **abuse**: idle connections (1000 for the daemon; the unikernel's pool size for the
//!     unikernel), slowloris senders and random junk, while a well-behaved client asks for
//!     tokens: its success rate and latency percentiles (target: 100 %, p99 < 50 ms on the
//!     daemon);
//! (b) **volume**: 1 million token requests spread over 10 minutes (scaled to `--seconds`) from
//!     several keep-alive clients: errors, and the daemon's resident memory at start and end;
//!     the unikernel must still answer afterwards.
//!
//! Prints a table and writes `target/bench/soak.json`. Every loop is bounded in time and count
//! and talks to loopback only.

use crate::Result;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xtask::http::read_response;
use xtask::load::{self, percentile};
use xtask::{config, qemu, target_dir};

const TOKEN_PATH: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
/// Requests of the volume phase for the full 10 minutes.
const VOLUME_REQUESTS: u64 = 1_000_000;
const VOLUME_FULL_SECONDS: u64 = 600;
const VOLUME_CLIENTS: u64 = 4;

struct Opts {
    seconds: u64,
    abuse_seconds: u64,
    daemon: bool,
    unikernel: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        seconds: VOLUME_FULL_SECONDS,
        abuse_seconds: 30,
        daemon: true,
        unikernel: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = num("--seconds")?.max(1),
            "--abuse-seconds" => o.abuse_seconds = num("--abuse-seconds")?.max(1),
            "--target" => match it.next().map(String::as_str) {
                Some("daemon") => o.unikernel = false,
                Some("unikernel") => o.daemon = false,
                Some("both") => {}
                other => return Err(format!("--target daemon|unikernel|both, not {other:?}")),
            },
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

fn request(host: &str) -> Vec<u8> {
    format!("GET {TOKEN_PATH} HTTP/1.1\r\nHost: {host}\r\nMetadata: true\r\n\r\n").into_bytes()
}

/// A keep-alive client that reconnects when the connection is gone.
struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    req: Vec<u8>,
    /// Why the last failed request failed (`HTTP 503`, `connect: ...`, `read: ...`).
    last_failure: String,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: None,
            req: request("169.254.169.254"),
            last_failure: String::new(),
        }
    }

    /// One token request; its status (0: transport failure) and latency.
    fn ask(&mut self) -> (u16, Duration) {
        let t = Instant::now();
        for _ in 0..2 {
            if self.stream.is_none() {
                match TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        self.stream = Some(s);
                    }
                    Err(e) => {
                        self.last_failure = format!("connect: {:?}", e.kind());
                        return (0, t.elapsed());
                    }
                }
            }
            let s = self.stream.as_mut().expect("connected");
            match s.write_all(&self.req) {
                Ok(()) => match read_response(s, false) {
                    Ok(r) => {
                        if r.header("connection") == Some("close") {
                            self.stream = None;
                        }
                        if r.status != 200 {
                            self.last_failure = format!("HTTP {}", r.status);
                        }
                        return (r.status, t.elapsed());
                    }
                    Err(e) => self.last_failure = format!("read: {:?}", e.kind()),
                },
                Err(e) => self.last_failure = format!("write: {:?}", e.kind()),
            }
            // A keep-alive connection closed under us (idle timeout): reconnect once.
            self.stream = None;
        }
        (0, t.elapsed())
    }
}

#[derive(Default)]
struct Abuse {
    requests: u64,
    ok: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    idle_open: usize,
    slowloris_connections: u64,
    junk_connections: u64,
    failures: Failures,
}

/// Failed requests by why they failed.
type Failures = std::collections::BTreeMap<String, u64>;

fn abuse(addr: SocketAddr, idle: usize, seconds: u64) -> Abuse {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    // Idle connections: opened, never written to.
    let mut idle_conns = Vec::new();
    for _ in 0..idle {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => idle_conns.push(s),
            Err(_) => break,
        }
    }
    let idle_open = idle_conns.len();
    // Slowloris: a request head one byte every 200 ms, on 20 connections, reopened when closed.
    let slow_count = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        let (stop, slow_count) = (stop.clone(), slow_count.clone());
        threads.push(std::thread::spawn(move || {
            let mut conns: Vec<Option<TcpStream>> = (0..20).map(|_| None).collect();
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    if c.is_none() {
                        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                            let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                            let _ =
                                (&s).write_all(b"GET /metadata/identity/oauth2/token HTTP/1.1\r\n");
                            slow_count.fetch_add(1, Ordering::Relaxed);
                            *c = Some(s);
                        }
                    } else if let Some(s) = c.as_mut() {
                        if s.write_all(b"X").is_err() {
                            *c = None;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    // Junk: random bytes on fresh connections.
    let junk_count = Arc::new(AtomicU64::new(0));
    {
        let (stop, junk_count) = (stop.clone(), junk_count.clone());
        threads.push(std::thread::spawn(move || {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let junk: Vec<u8> = (0..700)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    let _ = s.write_all(&junk);
                    let _ = s.write_all(b"\r\n\r\n");
                    let mut sink = [0u8; 512];
                    let _ = s.read(&mut sink);
                    junk_count.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    // The well-behaved client.
    let mut client = Client::new(addr);
    let mut lat = Vec::new();
    let (mut requests, mut ok) = (0u64, 0u64);
    let mut failures = Failures::new();
    while Instant::now() < deadline {
        let (status, d) = client.ask();
        requests += 1;
        if status == 200 {
            ok += 1;
        } else {
            *failures.entry(client.last_failure.clone()).or_default() += 1;
        }
        lat.push(d.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(idle_conns);
    lat.sort_by(f64::total_cmp);
    Abuse {
        requests,
        ok,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(0.0),
        idle_open,
        slowloris_connections: slow_count.load(Ordering::Relaxed),
        junk_connections: junk_count.load(Ordering::Relaxed),
        failures,
    }
}

struct Volume {
    requests: u64,
    errors: u64,
    failures: Failures,
    seconds: f64,
    p99_ms: f64,
}

fn volume(addr: SocketAddr, total: u64, seconds: u64) -> Volume {
    let per_client = total / VOLUME_CLIENTS;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Failures::new()));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..VOLUME_CLIENTS)
        .map(|_| {
            let (lat, errors, done) = (lat.clone(), errors.clone(), done.clone());
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut mine = Vec::new();
                let hard_stop = start + Duration::from_secs(seconds * 3 + 30);
                for i in 0..per_client {
                    // Pace to spread the requests over `seconds`.
                    let due = start
                        + Duration::from_secs_f64(seconds as f64 * i as f64 / per_client as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if now > hard_stop {
                        errors.fetch_add(per_client - i, Ordering::Relaxed);
                        *failures
                            .lock()
                            .unwrap()
                            .entry("not sent: out of time".into())
                            .or_default() += per_client - i;
                        break;
                    }
                    let (status, d) = c.ask();
                    if status != 200 {
                        errors.fetch_add(1, Ordering::Relaxed);
                        *failures
                            .lock()
                            .unwrap()
                            .entry(c.last_failure.clone())
                            .or_default() += 1;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    if i % 64 == 0 {
                        mine.push(d.as_secs_f64() * 1000.0);
                    }
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mut lat = lat.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let failures_seen = std::mem::take(&mut *failures.lock().unwrap());
    Volume {
        requests: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        failures: failures_seen,
        seconds: start.elapsed().as_secs_f64(),
        p99_ms: percentile(&lat, 99.0),
    }
}

fn abuse_json(a: &Abuse) -> serde_json::Value {
    json!({
        "requests": a.requests, "ok": a.ok,
        "success_rate": if a.requests > 0 { a.ok as f64 / a.requests as f64 } else { 0.0 },
        "p50_ms": a.p50_ms, "p99_ms": a.p99_ms, "max_ms": a.max_ms,
        "idle_connections": a.idle_open,
        "slowloris_connections": a.slowloris_connections,
        "junk_connections": a.junk_connections,
        "failures": a.failures,
    })
}

fn print_failures(f: &Failures) {
    if !f.is_empty() {
        println!("           failures: {f:?}");
    }
}

fn print_abuse(who: &str, a: &Abuse) {
    println!(
        "{who:<10} abuse   {:>6} idle, {:>5} slowloris, {:>6} junk conns | good client {}/{} ok ({:.2} %), p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        a.idle_open,
        a.slowloris_connections,
        a.junk_connections,
        a.ok,
        a.requests,
        100.0 * a.ok as f64 / a.requests.max(1) as f64,
        a.p50_ms,
        a.p99_ms,
        a.max_ms
    );
    print_failures(&a.failures);
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    let total = VOLUME_REQUESTS * o.seconds / VOLUME_FULL_SECONDS;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut report = serde_json::Map::new();
    println!(
        "soak: abuse {} s, then {} requests over {} s per target",
        o.abuse_seconds, total, o.seconds
    );

    if o.daemon {
        let bin = load::build_release_daemon()?;
        let cfg = dir.join("soak-daemon.json");
        config::write_demo(&cfg, "127.0.0.1:0", None).map_err(|e| e.to_string())?;
        let port = load::free_port().map_err(|e| e.to_string())?;
        let d = load::Daemon::start(&bin, &cfg, port, &dir.join("soak-daemon.log"))?;
        let a = abuse(d.addr, 1000, o.abuse_seconds);
        print_abuse("daemon", &a);
        let rss_start = load::rss_kib(d.pid()).unwrap_or(0);
        let v = volume(d.addr, total, o.seconds);
        let rss_end = load::rss_kib(d.pid()).unwrap_or(0);
        println!(
            "daemon     volume  {} requests in {:.0} s ({:.0}/s), {} errors, p99 {:.2} ms | RSS {} KiB -> {} KiB",
            v.requests, v.seconds, v.requests as f64 / v.seconds, v.errors, v.p99_ms, rss_start, rss_end
        );
        print_failures(&v.failures);
        report.insert(
            "daemon".into(),
            json!({
                "abuse": abuse_json(&a),
                "volume": {"requests": v.requests, "errors": v.errors, "failures": v.failures, "seconds": v.seconds,
                           "p99_ms": v.p99_ms, "rss_start_kib": rss_start, "rss_end_kib": rss_end},
            }),
        );
    }

    if o.unikernel {
        let image = qemu::try_build_image(true)?;
        let cfg = dir.join("soak-unikernel.json");
        config::write_demo(&cfg, "127.0.0.1:0", None).map_err(|e| e.to_string())?;
        let port = load::free_port().map_err(|e| e.to_string())?;
        let mut guest = qemu::Guest::spawn(&image, &qemu::QemuOpts::new(&cfg, port))
            .map_err(|e| e.to_string())?;
        guest.wait_ready(Duration::from_secs(30))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let idle = imds_agent::limits::LISTEN_SOCKETS;
        let a = abuse(addr, idle, o.abuse_seconds);
        print_abuse("unikernel", &a);
        let qemu_rss_start = load::rss_kib(guest.pid()).unwrap_or(0);
        let v = volume(addr, total, o.seconds);
        let qemu_rss_end = load::rss_kib(guest.pid()).unwrap_or(0);
        let (after, _) = Client::new(addr).ask();
        println!(
            "unikernel  volume  {} requests in {:.0} s ({:.0}/s), {} errors, p99 {:.2} ms | answering after: {} | QEMU RSS {} KiB -> {} KiB",
            v.requests, v.seconds, v.requests as f64 / v.seconds, v.errors, v.p99_ms,
            if after == 200 { "yes" } else { "NO" }, qemu_rss_start, qemu_rss_end
        );
        print_failures(&v.failures);
        report.insert(
            "unikernel".into(),
            json!({
                "abuse": abuse_json(&a),
                "volume": {"requests": v.requests, "errors": v.errors, "failures": v.failures, "seconds": v.seconds,
                           "p99_ms": v.p99_ms, "answering_after": after == 200,
                           "qemu_rss_start_kib": qemu_rss_start, "qemu_rss_end_kib": qemu_rss_end},
            }),
        );
    }
    let out = dir.join("soak.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::Value::Object(report)).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    println!("wrote {}", out.display());
    Ok(())
}
