//! `cargo xtask bench broker`: broker mode against a real OAuth2 authority (node oidc-provider
//! over TLS 1.3 on loopback, `xtask::authority`).
//!
//! ```text
//! cargo xtask bench broker [--runs N] [--load-seconds S] [--connections N] [--unikernel-runs N]
//! ```
//!
//! 1. **Cold first token**: a fresh release daemon per run (empty cache, no connection to the
//!    authority), one token request timed from the client's request to the whole answer: the
//!    agent's TCP connect, TLS 1.3 handshake (embedded-tls, CA-verified), ES256 client
//!    assertion, token request and the authority's answer, then the IMDS answer. Against it,
//!    in the same run and alternating which goes first, `curl` making the same token request
//!    to the same authority with a pre-signed assertion (`curl_token_request`, curl's own
//!    `time_total`: no process start-up). Medians of `--runs` (default 15) and their ratio
//!    (target: agent <= 1.2 x curl).
//! 2. **Cached tokens while a refresh is in flight**: a primed daemon under `wrk`
//!    (keep-alive, `--connections`, cached token URL) for `--load-seconds`, once with nothing
//!    else going on and once while a fetch of another resource waits on a slow authority
//!    (a `Delay` fault longer than the load); the daemon is pinned to CPU 0 and wrk to CPU 1
//!    when there are two.
//! 3. **Unikernel cold first token** (`--unikernel-runs`, default 5; 0 skips): the broker image
//!    under QEMU (TCG, user networking; the authority at 10.0.2.2), a fresh boot per run, the
//!    first token request timed the same way.
//!
//! Prints a table and writes `target/bench/broker.json`. Figures are reported, never asserted.

use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xtask::authority::{
    curl_token_request, token_form, Alg, Authority, AuthorityOpts, ClientKey, ClientSpec, Fault,
    Style,
};
use xtask::http::pct;
use xtask::http::read_response;
use xtask::load::{build_release_daemon, free_port, Daemon};
use xtask::{config, qemu, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "usage: cargo xtask bench broker [--runs N] [--load-seconds S] [--connections N] [--unikernel-runs N]";
const MGMT: &str = "https://management.azure.com/";
const VAULT: &str = "https://vault.azure.net";
/// How long the authority holds the in-flight fetch beyond the load (the agent gives one
/// attempt 8 s: the delay stays below).
const REFRESH_DELAY_EXTRA: Duration = Duration::from_millis(2500);

struct Opts {
    runs: usize,
    load_seconds: u32,
    connections: u32,
    unikernel_runs: usize,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        runs: 15,
        load_seconds: 4,
        connections: 16,
        unikernel_runs: 5,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
        };
        match a.as_str() {
            "--runs" => o.runs = num("--runs")?.max(1) as usize,
            "--load-seconds" => o.load_seconds = num("--load-seconds")?.clamp(1, 5) as u32,
            "--connections" => o.connections = num("--connections")?.max(1) as u32,
            "--unikernel-runs" => o.unikernel_runs = num("--unikernel-runs")? as usize,
            _ => return Err(USAGE.into()),
        }
    }
    Ok(o)
}

/// An ES256 client key whose `kid` is what the agent puts in its assertions (RFC 7638).
fn agent_key() -> Result<ClientKey> {
    let tmp = ClientKey::generate(Alg::ES256, "tmp");
    let sk = imds_agent::pem::parse_signing_key(&tmp.private_pem)
        .map_err(|e| format!("agent key: {e}"))?;
    let kid = imds_agent::jose::PublicJwk::of(sk.verifying_key()).thumbprint();
    ClientKey::from_pem(Alg::ES256, &kid, &tmp.private_pem)
}

/// What the runs share: the authority, the system identity's key, the config documents.
struct Setup {
    authority: Authority,
    client_id: String,
    key: ClientKey,
    /// Broker config for the daemon (authority at its loopback address).
    daemon_config: PathBuf,
    /// Broker config for the unikernel (authority at 10.0.2.2).
    guest_config: PathBuf,
}

fn setup(dir: &Path) -> Result<Setup> {
    let mut doc = config::demo("127.0.0.1:0", None);
    let mut clients = Vec::new();
    let mut system = None;
    for id in doc["identities"].as_array_mut().ok_or("demo identities")? {
        let key = agent_key()?;
        let client_id = id["client_id"].as_str().unwrap_or_default().to_string();
        clients.push(ClientSpec::new(&client_id, &key));
        id["key"] = key.private_pem.clone().into();
        if id["kind"] == "system" {
            system = Some((client_id, key));
        }
    }
    let (client_id, key) = system.ok_or("no system identity in the demo config")?;
    let authority = Authority::start(AuthorityOpts {
        clients,
        ..AuthorityOpts::default()
    });
    let token_url = authority.token_url_at(Style::V1, "localhost");
    let write = |name: &str, address: String| -> Result<PathBuf> {
        let mut d = doc.clone();
        d["authority"] = json!({
            "token_url": token_url,
            "ca_cert": authority.ca_pem,
            "style": "v1",
            "address": address,
            "timeout_s": 20,
        });
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(&d).unwrap())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let daemon_config = write("broker-config.json", authority.https.to_string())?;
    let guest_config = write(
        "broker-guest-config.json",
        format!("10.0.2.2:{}", authority.https.port()),
    )?;
    Ok(Setup {
        authority,
        client_id,
        key,
        daemon_config,
        guest_config,
    })
}

/// One token request on a new connection, timed from the first byte written to the whole
/// answer. Returns the status and the time.
fn timed_token(addr: SocketAddr, resource: &str, extra: &str) -> Result<(u16, Duration)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let req = format!(
        "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{extra} HTTP/1.1\r\nHost: {addr}\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        pct(resource)
    );
    let t0 = Instant::now();
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let resp = read_response(&mut s, false).map_err(|e| format!("read: {e}"))?;
    Ok((resp.status, t0.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The fetch time the agent logged for its first token ("... token (expires in N s) in M ms").
fn logged_fetch_ms(log: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("upstream: ") && l.contains(": token (expires in"))
        .and_then(|l| l.rsplit_once(" in "))
        .and_then(|(_, v)| v.trim_end_matches(" ms").trim().parse().ok())
}

struct ColdRun {
    agent_ms: f64,
    agent_fetch_ms: Option<f64>,
    curl_ms: f64,
    curl_appconnect_ms: f64,
    curl_wall_ms: f64,
}

fn cold_daemon(bin: &Path, s: &Setup, dir: &Path) -> Result<(f64, Option<f64>)> {
    let port = free_port().map_err(|e| e.to_string())?;
    let log = dir.join("broker-daemon.log");
    let d = Daemon::start(bin, &s.daemon_config, port, &log)?;
    let (status, t) = timed_token(d.addr, MGMT, "")?;
    if status != 200 {
        return Err(format!(
            "the daemon answered {status}; see {}",
            log.display()
        ));
    }
    drop(d);
    Ok((ms(t), logged_fetch_ms(&log)))
}

fn cold_curl(s: &Setup) -> Result<(f64, f64, f64)> {
    // Like the agent, no name to resolve: the address (which the certificate also names).
    // Signed before the clock starts: curl only sends it.
    let url = s.authority.token_url(Style::V1);
    let assertion = s.key.client_assertion(&s.client_id, url);
    let form = token_form(Style::V1, MGMT, &assertion);
    let r = curl_token_request(url, &s.authority.ca_path, &form)?;
    if r.status != 200 {
        return Err(format!("curl got {}: {}", r.status, r.body));
    }
    Ok((ms(r.time_total), ms(r.time_appconnect), ms(r.elapsed)))
}

fn pin(pid: u32, cpu: u32) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `wrk` against the cached token URL; requests per second and wrk's summary.
fn wrk(addr: SocketAddr, o: &Opts) -> Result<(f64, u64, String)> {
    let url = format!(
        "http://{addr}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}",
        pct(MGMT)
    );
    let mut c = if cpus() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    c.args([
        "-t1",
        &format!("-c{}", o.connections),
        &format!("-d{}s", o.load_seconds),
        "-H",
        "Metadata: true",
        &url,
    ]);
    let out = c
        .output()
        .map_err(|e| format!("wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((rps, non_2xx, text))
}

struct Refresh {
    idle_rps: f64,
    idle_non_2xx: u64,
    during_rps: f64,
    during_non_2xx: u64,
    /// The in-flight fetch's answer status and how long it took.
    fetch_status: u16,
    fetch_ms: f64,
    /// The fetch was still waiting when the load ended.
    overlapped: bool,
}

fn refresh_in_flight(bin: &Path, s: &Setup, dir: &Path, o: &Opts) -> Result<Refresh> {
    let port = free_port().map_err(|e| e.to_string())?;
    let log = dir.join("broker-daemon-load.log");
    let d = Daemon::start(bin, &s.daemon_config, port, &log)?;
    if cpus() >= 2 {
        pin(d.pid(), 0);
    }
    let (status, _) = timed_token(d.addr, MGMT, "")?;
    if status != 200 {
        return Err(format!("priming: {status}; see {}", log.display()));
    }
    let (idle_rps, idle_non_2xx, _) = wrk(d.addr, o)?;

    let delay = Duration::from_secs(u64::from(o.load_seconds)) + REFRESH_DELAY_EXTRA;
    s.authority.set_fault(Fault::Delay(delay));
    let addr = d.addr;
    let fetch = std::thread::spawn(move || timed_token(addr, VAULT, ""));
    // Let the fetch reach the authority before the load starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s
        .authority
        .requests()
        .iter()
        .any(|q| q["params"]["resource"] == VAULT)
    {
        if Instant::now() > deadline {
            s.authority.set_fault(Fault::None);
            return Err("the fetch never reached the authority".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (during_rps, during_non_2xx, _) = wrk(d.addr, o)?;
    let overlapped = !fetch.is_finished();
    let (fetch_status, fetch_time) = fetch.join().map_err(|_| "fetch thread panicked")??;
    s.authority.set_fault(Fault::None);
    Ok(Refresh {
        idle_rps,
        idle_non_2xx,
        during_rps,
        during_non_2xx,
        fetch_status,
        fetch_ms: ms(fetch_time),
        overlapped,
    })
}

/// Cold first token through the unikernel: a fresh boot per run. Also the guest's line about
/// the broker tasks' memory.
fn cold_unikernel(s: &Setup, runs: usize) -> Result<(Vec<f64>, String)> {
    let image = qemu::try_build_image_with(true, &["broker"])?;
    let mut v = Vec::new();
    let mut memory = String::new();
    for _ in 0..runs {
        let port = qemu::free_port();
        let opts = qemu::QemuOpts::new(&s.guest_config, port);
        let mut guest = qemu::Guest::spawn(&image, &opts).map_err(|e| format!("QEMU: {e}"))?;
        guest.wait_ready(Duration::from_secs(60))?;
        let (status, t) = timed_token(SocketAddr::from(([127, 0, 0, 1], port)), MGMT, "")?;
        if status != 200 {
            return Err(format!("the guest answered {status}:\n{}", guest.output()));
        }
        v.push(ms(t));
        if let Some(l) = guest
            .output()
            .lines()
            .find(|l| l.contains("imds-agent: broker: "))
        {
            memory = l.trim_start_matches("imds-agent: broker: ").to_string();
        }
    }
    Ok((v, memory))
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("building the daemon (release) ...");
    let bin = build_release_daemon()?;
    eprintln!("starting the authority ...");
    let s = setup(&dir)?;

    // Warm both paths once (node's JIT, the page cache), untimed.
    cold_daemon(&bin, &s, &dir)?;
    cold_curl(&s)?;
    let mut cold = Vec::new();
    for i in 0..o.runs {
        let (agent, curl) = if i % 2 == 0 {
            let a = cold_daemon(&bin, &s, &dir)?;
            (a, cold_curl(&s)?)
        } else {
            let c = cold_curl(&s)?;
            (cold_daemon(&bin, &s, &dir)?, c)
        };
        eprintln!(
            "run {:>2}: agent {:7.2} ms, curl {:7.2} ms",
            i + 1,
            agent.0,
            curl.0
        );
        cold.push(ColdRun {
            agent_ms: agent.0,
            agent_fetch_ms: agent.1,
            curl_ms: curl.0,
            curl_appconnect_ms: curl.1,
            curl_wall_ms: curl.2,
        });
    }
    let agent_med = xtask::load::median(&cold.iter().map(|r| r.agent_ms).collect::<Vec<f64>>());
    let fetch_med = xtask::load::median(
        &cold
            .iter()
            .filter_map(|r| r.agent_fetch_ms)
            .collect::<Vec<f64>>(),
    );
    let curl_med = xtask::load::median(&cold.iter().map(|r| r.curl_ms).collect::<Vec<f64>>());
    let curl_tls_med = xtask::load::median(
        &cold
            .iter()
            .map(|r| r.curl_appconnect_ms)
            .collect::<Vec<f64>>(),
    );
    let curl_wall_med =
        xtask::load::median(&cold.iter().map(|r| r.curl_wall_ms).collect::<Vec<f64>>());
    let ratio = agent_med / curl_med;

    eprintln!("cached tokens under load, then with a fetch in flight ...");
    let refresh = refresh_in_flight(&bin, &s, &dir, &o)?;

    let uk = if o.unikernel_runs > 0 {
        eprintln!(
            "unikernel cold first token ({} boots) ...",
            o.unikernel_runs
        );
        Some(cold_unikernel(&s, o.unikernel_runs)?)
    } else {
        None
    };
    let uk_med = uk.as_ref().map(|(v, _)| xtask::load::median(&v.clone()));

    println!(
        "\nbroker mode: cold first token ({} runs, medians)\n",
        o.runs
    );
    println!("| path | median | note |");
    println!("|---|---:|---|");
    println!(
        "| agent (daemon, release): client request -> answer | {agent_med:.2} ms | TCP + TLS 1.3 + assertion + request + answer; the task's own timer: {fetch_med:.2} ms |"
    );
    println!(
        "| curl, same request, pre-signed assertion (time_total) | {curl_med:.2} ms | TLS done at {curl_tls_med:.2} ms; with process start-up {curl_wall_med:.2} ms |"
    );
    println!(
        "| **ratio agent / curl** | **{ratio:.2}x** | target <= 1.2x: {} |",
        if ratio <= 1.2 { "met" } else { "NOT met" }
    );
    if let Some(m) = uk_med {
        println!(
            "| unikernel (QEMU TCG, slirp), fresh boot | {m:.2} ms | {:.2}x curl; {} |",
            m / curl_med,
            uk.as_ref().map_or("", |(_, mem)| mem.as_str())
        );
    }
    println!(
        "\ncached tokens, wrk -c{} -d{}s (daemon CPU 0, wrk CPU 1)\n",
        o.connections, o.load_seconds
    );
    println!("| situation | requests/s | non-2xx |");
    println!("|---|---:|---:|");
    println!(
        "| nothing else going on | {:.0} | {} |",
        refresh.idle_rps, refresh.idle_non_2xx
    );
    println!(
        "| a fetch waiting on a slow authority | {:.0} | {} |",
        refresh.during_rps, refresh.during_non_2xx
    );
    println!(
        "\nthe fetch: {} after {:.0} ms (in flight for the whole load: {})",
        refresh.fetch_status, refresh.fetch_ms, refresh.overlapped
    );

    let report = json!({
        "runs": o.runs,
        "cold_first_token": {
            "agent_median_ms": agent_med,
            "agent_task_fetch_median_ms": fetch_med,
            "curl_time_total_median_ms": curl_med,
            "curl_time_appconnect_median_ms": curl_tls_med,
            "curl_wall_median_ms": curl_wall_med,
            "ratio_agent_to_curl": ratio,
            "target_ratio": 1.2,
            "runs": cold.iter().map(|r| json!({
                "agent_ms": r.agent_ms,
                "agent_task_fetch_ms": r.agent_fetch_ms,
                "curl_ms": r.curl_ms,
                "curl_appconnect_ms": r.curl_appconnect_ms,
                "curl_wall_ms": r.curl_wall_ms,
            })).collect::<Vec<Value>>(),
        },
        "cached_under_load": {
            "connections": o.connections,
            "seconds": o.load_seconds,
            "idle_requests_per_s": refresh.idle_rps,
            "idle_non_2xx": refresh.idle_non_2xx,
            "fetch_in_flight_requests_per_s": refresh.during_rps,
            "fetch_in_flight_non_2xx": refresh.during_non_2xx,
            "fetch_status": refresh.fetch_status,
            "fetch_ms": refresh.fetch_ms,
            "fetch_overlapped_the_load": refresh.overlapped,
        },
        "unikernel_cold_first_token": uk.as_ref().map(|(v, memory)| json!({
            "runs_ms": v,
            "broker_memory": memory,
            "median_ms": uk_med,
            "ratio_to_curl": uk_med.map(|m| m / curl_med),
        })),
    });
    let out = dir.join("broker.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nwritten: {}", out.display());
    Ok(())
}
