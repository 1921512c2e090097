//! `cargo xtask bench host`: the host daemon's cached-token rate against nginx serving the same
//! bytes as a static file, plus the latency of a cache miss (a mint).
//!
//! ```text
//! cargo xtask bench host [--duration S] [--connections N] [--threads N] [--mints N] [--rounds N] [--perf]
//! ```
//!
//! 1. builds the daemon in release and writes a demo config under `target/bench/`;
//! 2. starts it on a free loopback port (its log goes to `target/bench/daemon.log`) and warms the
//!    cache with one token request;
//! 3. starts nginx (1 worker, `access_log off`, keep-alive; its own config, pid and logs under
//!    `target/bench/nginx/`) serving a file with exactly the bytes of the token response body,
//!    with the same `Content-Type`;
//! 4. loads each in turn with `wrk` (keep-alive, `Metadata: true`, the real token URL), the
//!    server pinned to CPU 0 and wrk to CPU 1 when the machine has two or more, for `--rounds`
//!    rounds (default 3, alternating which goes first) and reports the median round;
//!    alongside each run, the server's CPU time per request (from /proc: user + system of the
//!    process and its children), which stays comparable when other work shares the machine;
//! 5. measures cache misses: sequential `bypass_cache=true` requests on one connection (429s
//!    from the per-source mint limit are waited out as `Retry-After` says and not timed);
//! 6. prints a table and writes `target/bench/host.json`.
//!
//! With `--perf`, `perf record` samples the daemon during its wrk run and the top of
//! `perf report` is written to `target/bench/perf.txt`. Figures are reported, never asserted.

use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xtask::http::pct;
use xtask::{config, load, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

const RESOURCE: &str = "https://management.azure.com/";
const USAGE: &str = "usage: cargo xtask bench host [--duration S] [--connections N] [--threads N] [--mints N] [--rounds N] [--perf]";

struct Opts {
    duration_s: u32,
    connections: u32,
    threads: u32,
    mints: usize,
    rounds: usize,
    perf: bool,
}

pub fn run(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("host") => host(parse_opts(&args[1..])?),
        _ => Err(USAGE.into()),
    }
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        duration_s: 10,
        connections: 50,
        threads: 1,
        mints: 200,
        rounds: 3,
        perf: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            let v = it
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
            v.parse()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        };
        match a.as_str() {
            "--duration" => o.duration_s = num("--duration")? as u32,
            "--connections" => o.connections = num("--connections")? as u32,
            "--threads" => o.threads = num("--threads")? as u32,
            "--mints" => o.mints = num("--mints")? as usize,
            "--rounds" => o.rounds = (num("--rounds")? as usize).max(1),
            "--perf" => o.perf = true,
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

fn show_cmd(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.contains('&') || a.contains('?') {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// A server process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    name: &'static str,
    child: Child,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "xtask bench: {} did not stop on SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU sets: the server on one core, the load generator on another (when there are two).
struct Pinning {
    server: Option<&'static str>,
    client: Option<&'static str>,
}

impl Pinning {
    fn detect() -> Pinning {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        if cpus >= 2 && xtask::setup::have("taskset") {
            Pinning {
                server: Some("0"),
                client: Some("1"),
            }
        } else {
            Pinning {
                server: None,
                client: None,
            }
        }
    }

    fn command(cpus: Option<&str>, program: &Path) -> Command {
        match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn describe(&self) -> String {
        match (self.server, self.client) {
            (Some(s), Some(c)) => format!("server pinned to CPU {s}, wrk to CPU {c} (taskset)"),
            _ => "no pinning (fewer than 2 CPUs or no taskset)".into(),
        }
    }
}

/// A minimal keep-alive HTTP/1.1 client: send a GET, read one Content-Length-framed answer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    content_type: String,
    retry_after_s: Option<u64>,
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    fn get(&mut self, target: &str) -> Result<Answer> {
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n");
        self.stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status line in {head:?}"))?;
                let mut len = 0usize;
                let mut content_type = String::new();
                let mut retry_after_s = None;
                for l in lines {
                    if let Some((n, v)) = l.split_once(':') {
                        if n.trim().eq_ignore_ascii_case("content-length") {
                            len = v
                                .trim()
                                .parse()
                                .map_err(|_| format!("bad Content-Length in {head:?}"))?;
                        } else if n.trim().eq_ignore_ascii_case("content-type") {
                            content_type = v.trim().to_string();
                        } else if n.trim().eq_ignore_ascii_case("retry-after") {
                            retry_after_s = v.trim().parse().ok();
                        }
                    }
                }
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let n = self
                        .stream
                        .read(&mut chunk)
                        .map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        return Err("connection closed mid-body".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok(Answer {
                    status,
                    content_type,
                    retry_after_s,
                    body,
                });
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before a response".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn token_target(extra: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{extra}",
        pct(RESOURCE)
    )
}

/// What wrk reported.
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    non_2xx: u64,
    socket_errors: String,
    /// CPU time the server process (and its children) used per request during the run.
    cpu_us_per_req: f64,
    /// Share of one CPU the server used during the run.
    cpu_share: f64,
}

/// "1.23ms" → 1230.0 (microseconds).
fn wrk_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                r.rps = words.next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
            }
            Some("50%") => r.p50_us = words.next().and_then(wrk_duration_us).unwrap_or(0.0),
            Some("90%") => r.p90_us = words.next().and_then(wrk_duration_us).unwrap_or(0.0),
            Some("99%") => r.p99_us = words.next().and_then(wrk_duration_us).unwrap_or(0.0),
            Some("Non-2xx") => {
                r.non_2xx = t
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }
            Some("Socket") => {
                r.socket_errors = t.trim_start_matches("Socket errors:").trim().to_string()
            }
            Some(n) if t.contains(" requests in ") => r.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if r.rps == 0.0 {
        return Err(format!("could not read wrk's output:\n{out}"));
    }
    Ok(r)
}

fn wrk(o: &Opts, pin: &Pinning, addr: SocketAddr, duration_s: u32) -> Result<(WrkResult, String)> {
    let mut c = Pinning::command(pin.client, Path::new("wrk"));
    c.arg(format!("-t{}", o.threads))
        .arg(format!("-c{}", o.connections))
        .arg(format!("-d{duration_s}s"))
        .arg("--latency")
        .args(["-H", "Metadata: true"])
        .arg(format!("http://{addr}{}", token_target("")));
    eprintln!("+ {}", show_cmd(&c));
    let out = c.output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((parse_wrk(&text)?, text))
}

/// Latency of `n` sequential requests on one keep-alive connection, in microseconds.
struct Sequential {
    ok: usize,
    other: Vec<u16>,
    /// 429 answers (the per-source mint limit): waited out as `Retry-After` says, then retried.
    throttled: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn sequential(addr: SocketAddr, target: &str, n: usize) -> Result<Sequential> {
    let mut client = Client::connect(addr)?;
    let mut lat = Vec::with_capacity(n);
    let mut other = Vec::new();
    let mut throttled = 0;
    while lat.len() + other.len() < n {
        let t = Instant::now();
        let a = client.get(target)?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        match a.status {
            200 => lat.push(us),
            429 if throttled < 100 * n => {
                throttled += 1;
                std::thread::sleep(Duration::from_secs(
                    a.retry_after_s.unwrap_or(1).clamp(1, 10),
                ));
            }
            s => other.push(s),
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(Sequential {
        ok: lat.len(),
        other,
        throttled,
        p50_us: load::percentile(&lat, 50.0),
        p99_us: load::percentile(&lat, 99.0),
        max_us: lat.last().copied().unwrap_or(0.0),
    })
}

fn nginx_conf(dir: &Path, port: u16, content_type: &str) -> String {
    let d = dir.display();
    format!(
        "# Written by cargo xtask bench host: nginx as the static-file baseline.\n\
         worker_processes 1;\n\
         daemon off;\n\
         master_process on;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   keepalive_timeout 65;\n\
         \x20   keepalive_requests 100000000;\n\
         \x20   tcp_nodelay on;\n\
         \x20   sendfile off;\n\
         \x20   server_tokens off;\n\
         \x20   open_file_cache max=16 inactive=60s;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   types {{ }}\n\
         \x20   default_type \"{content_type}\";\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       root {d}/www;\n\
         \x20   }}\n\
         }}\n"
    )
}

fn start_nginx(
    dir: &Path,
    pin: &Pinning,
    port: u16,
    body: &[u8],
    content_type: &str,
) -> Result<Server> {
    let file = dir.join("www/metadata/identity/oauth2/token");
    std::fs::create_dir_all(file.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::write(&file, body).map_err(|e| e.to_string())?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, port, content_type)).map_err(|e| e.to_string())?;
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        PathBuf::from("/usr/sbin/nginx")
    } else {
        PathBuf::from("nginx")
    };
    let mut c = Pinning::command(pin.server, &nginx);
    // -e: the error log before the config is read (else /var/log/nginx/error.log).
    c.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"));
    eprintln!("+ {}", show_cmd(&c));
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e}"))?;
    let server = Server {
        name: "nginx",
        child,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    if !load::wait_listening(addr, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        return Err(format!("nginx did not start on {addr}; error.log:\n{log}"));
    }
    Ok(server)
}

fn start_daemon(bin: &Path, cfg: &Path, log: &Path, pin: &Pinning, port: u16) -> Result<Server> {
    let mut c = Pinning::command(pin.server, bin);
    c.arg("--config").arg(cfg).args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--legacy-listen",
        "off",
    ]);
    eprintln!("+ {} 2>{}", show_cmd(&c), log.display());
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("imds-agent: {e}"))?;
    let server = Server {
        name: "imds-agent",
        child,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    if !load::wait_listening(addr, Duration::from_secs(10)) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        return Err(format!("imds-agent did not start on {addr}; log:\n{text}"));
    }
    Ok(server)
}

/// `perf record` on a process for `seconds`; returns the recorder to wait for.
fn perf_record(pid: u32, seconds: u32, out: &Path) -> Result<Child> {
    let mut c = Command::new("perf");
    c.args(["record", "-F", "2000", "-g", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &seconds.to_string()]);
    eprintln!("+ {}", show_cmd(&c));
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf: {e}"))
}

fn perf_report(data: &Path, out: &Path) -> Result {
    let mut c = Command::new("perf");
    c.args([
        "report",
        "--stdio",
        "--no-children",
        "--percent-limit",
        "0.5",
        "-g",
        "none",
        "-i",
    ])
    .arg(data);
    eprintln!("+ {} > {}", show_cmd(&c), out.display());
    let o = c.output().map_err(|e| format!("perf report: {e}"))?;
    std::fs::write(out, &o.stdout).map_err(|e| e.to_string())
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn host(o: Opts) -> Result {
    let bench = target_dir().join("bench");
    std::fs::create_dir_all(&bench).map_err(|e| e.to_string())?;
    if o.perf {
        xtask::setup::ensure_apt("perf", "linux-perf")?;
    }

    let bin = xtask::load::build_release_daemon()?;

    let cfg = bench.join("config.json");
    config::write_demo(&cfg, "127.0.0.1:0", None).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let pin = Pinning::detect();
    eprintln!("xtask bench: {}", pin.describe());

    // The daemon, warmed with one token request.
    let port = load::free_port().map_err(|e| e.to_string())?;
    let daemon_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let daemon = start_daemon(&bin, &cfg, &bench.join("daemon.log"), &pin, port)?;
    let warm = Client::connect(daemon_addr)?.get(&token_target(""))?;
    if warm.status != 200 {
        return Err(format!(
            "warm-up token request: {} {}",
            warm.status,
            String::from_utf8_lossy(&warm.body)
        ));
    }

    // nginx with the same bytes.
    let nginx_dir = bench.join("nginx");
    let nginx_port = load::free_port().map_err(|e| e.to_string())?;
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    let nginx = start_nginx(&nginx_dir, &pin, nginx_port, &warm.body, &warm.content_type)?;
    let check = Client::connect(nginx_addr)?.get(&token_target(""))?;
    if check.status != 200 || check.body != warm.body || check.content_type != warm.content_type {
        return Err(format!(
            "nginx does not answer the same bytes: {} {:?} ({} bytes)",
            check.status,
            check.content_type,
            check.body.len()
        ));
    }

    // Short warm-up runs (not recorded), then the measured rounds, alternating which server
    // goes first so that drift on a shared machine hits both alike.
    wrk(&o, &pin, daemon_addr, 2)?;
    wrk(&o, &pin, nginx_addr, 2)?;
    let perf_data = bench.join("perf.data");
    let mut daemon_runs = Vec::new();
    let mut nginx_runs = Vec::new();
    let mut wrk_text = String::new();
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_daemon in order {
            let addr = if is_daemon { daemon_addr } else { nginx_addr };
            let recorder = if o.perf && is_daemon && round == 0 {
                Some(perf_record(
                    daemon.pid(),
                    o.duration_s.saturating_sub(1).max(1),
                    &perf_data,
                )?)
            } else {
                None
            };
            let pid = if is_daemon { daemon.pid() } else { nginx.pid() };
            let cpu_before = cpu_seconds(pid);
            let started = Instant::now();
            let (mut r, text) = wrk(&o, &pin, addr, o.duration_s)?;
            let cpu = cpu_seconds(pid) - cpu_before;
            r.cpu_share = cpu / started.elapsed().as_secs_f64();
            r.cpu_us_per_req = if r.requests > 0 {
                cpu * 1e6 / r.requests as f64
            } else {
                0.0
            };
            if let Some(mut rec) = recorder {
                let _ = rec.wait();
                perf_report(&perf_data, &bench.join("perf.txt"))?;
            }
            let name = if is_daemon { "imds-agent" } else { "nginx" };
            wrk_text.push_str(&format!("## round {} {name}\n{text}\n", round + 1));
            eprintln!(
                "xtask bench: round {} {name}: {:.0} requests/s, {:.1} µs CPU a request ({:.0}% of a CPU)",
                round + 1,
                r.rps,
                r.cpu_us_per_req,
                r.cpu_share * 100.0
            );
            if is_daemon {
                daemon_runs.push(r);
            } else {
                nginx_runs.push(r);
            }
        }
    }
    let d = median_run(&daemon_runs);
    let n = median_run(&nginx_runs);
    let d_cpu = load::median(
        &daemon_runs
            .iter()
            .map(|r| r.cpu_us_per_req)
            .collect::<Vec<f64>>(),
    );
    let n_cpu = load::median(
        &nginx_runs
            .iter()
            .map(|r| r.cpu_us_per_req)
            .collect::<Vec<f64>>(),
    );
    drop(nginx);

    // Latency without load: cache hits, then cache misses (every request mints and signs).
    let hits = sequential(daemon_addr, &token_target(""), 1000)?;
    let mints = sequential(daemon_addr, &token_target("&bypass_cache=true"), o.mints)?;
    drop(daemon);

    let ratio = d.rps / n.rps;
    let report = json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "pinning": pin.describe(),
        },
        "load": {
            "tool": "wrk",
            "threads": o.threads,
            "connections": o.connections,
            "duration_s": o.duration_s,
            "target": token_target(""),
            "body_bytes": warm.body.len(),
            "content_type": warm.content_type,
        },
        "rounds": o.rounds,
        "daemon": wrk_json(&d),
        "nginx": wrk_json(&n),
        "daemon_rounds": daemon_runs.iter().map(wrk_json).collect::<Vec<_>>(),
        "nginx_rounds": nginx_runs.iter().map(wrk_json).collect::<Vec<_>>(),
        "ratio_daemon_over_nginx": ratio,
        "target_ratio": 1.0,
        "median_server_cpu_us_per_request": { "daemon": d_cpu, "nginx": n_cpu },
        "cpu_efficiency_ratio_daemon_over_nginx": n_cpu / d_cpu,
        "cache_hit_sequential": seq_json(&hits),
        "cache_miss_sequential": seq_json(&mints),
        "perf_report": o.perf.then(|| bench.join("perf.txt").display().to_string()),
    });
    let out = bench.join("host.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json"))
        .map_err(|e| e.to_string())?;
    std::fs::write(bench.join("wrk.txt"), wrk_text).map_err(|e| e.to_string())?;

    println!();
    println!(
        "host bench: wrk -t{} -c{} -d{}s × {} rounds (median shown), keep-alive, cached token ({} B body); {}",
        o.threads,
        o.connections,
        o.duration_s,
        o.rounds,
        warm.body.len(),
        pin.describe()
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>8} {:>14}",
        "server", "requests/s", "p50", "p90", "p99", "non-2xx", "CPU/request"
    );
    for (name, r, cpu) in [
        ("imds-agent (1 thread)", &d, d_cpu),
        ("nginx (1 worker)", &n, n_cpu),
    ] {
        println!(
            "{:<22} {:>12.0} {:>10} {:>10} {:>10} {:>8} {:>14}",
            name,
            r.rps,
            fmt_us(r.p50_us),
            fmt_us(r.p90_us),
            fmt_us(r.p99_us),
            r.non_2xx,
            format!("{cpu:.1} µs")
        );
    }
    println!("ratio imds-agent / nginx: {ratio:.2}× requests/s (target ≥ 1.00×)");
    println!(
        "ratio by server CPU time per request (nginx / imds-agent): {:.2}× (robust when the machine is shared)",
        n_cpu / d_cpu
    );
    println!();
    println!(
        "{:<36} {:>6} {:>10} {:>10} {:>10}",
        "sequential, one connection", "n", "p50", "p99", "max"
    );
    for (name, s) in [
        ("cache hit", &hits),
        ("cache miss (bypass_cache=true)", &mints),
    ] {
        println!(
            "{:<36} {:>6} {:>10} {:>10} {:>10}{}",
            name,
            s.ok,
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            fmt_us(s.max_us),
            match (s.other.is_empty(), s.throttled) {
                (true, 0) => String::new(),
                (true, t) => format!("  ({t} × 429 waited out: mint rate limit)"),
                (false, t) => format!(
                    "  ({} answered {:?}; {t} × 429 waited out)",
                    s.other.len(),
                    dedup(&s.other)
                ),
            }
        );
    }
    println!("\nwritten: {}", out.display());
    if o.perf {
        println!("perf: {}", bench.join("perf.txt").display());
    }
    Ok(())
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 on Linux in practice).
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process and its direct children (nginx's worker) so far.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |pid: &str| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    };
    let own = pid.to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: u64 = std::iter::once(own.as_str())
        .chain(children.split_whitespace())
        .map(ticks)
        .sum();
    total as f64 / clock_ticks()
}

/// The run with the median rate (its latencies come with it).
fn median_run(runs: &[WrkResult]) -> WrkResult {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2].clone()
}

fn dedup(v: &[u16]) -> Vec<u16> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn wrk_json(r: &WrkResult) -> serde_json::Value {
    json!({
        "requests": r.requests,
        "requests_per_s": r.rps,
        "latency_p50_us": r.p50_us,
        "latency_p90_us": r.p90_us,
        "latency_p99_us": r.p99_us,
        "non_2xx": r.non_2xx,
        "socket_errors": r.socket_errors,
        "server_cpu_us_per_request": r.cpu_us_per_req,
        "server_cpu_share": r.cpu_share,
    })
}

fn seq_json(s: &Sequential) -> serde_json::Value {
    json!({
        "ok": s.ok,
        "not_ok_statuses": s.other,
        "throttled_429_retried": s.throttled,
        "p50_us": s.p50_us,
        "p99_us": s.p99_us,
        "max_us": s.max_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1/x\n  1 threads and 50 connections\n\
                   \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                   \x20   Latency   612.05us  101.00us   3.00ms   90.00%\n\
                   \x20 Latency Distribution\n     50%  600.00us\n     75%  650.00us\n     90%    1.10ms\n     99%    2.50ms\n\
                   \x20 812345 requests in 10.00s, 1.20GB read\n\
                   \x20 Non-2xx or 3xx responses: 3\n\
                   Requests/sec:  81234.50\nTransfer/sec:    123.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 812345);
        assert_eq!(r.rps, 81234.5);
        assert_eq!(r.p50_us, 600.0);
        assert_eq!(r.p90_us, 1100.0);
        assert_eq!(r.p99_us, 2500.0);
        assert_eq!(r.non_2xx, 3);
    }
}
