//! What the commands need besides Rust, on a fresh Debian machine with only rustup: one table
//! ([`Need`]), what each command needs ([`needs_of`]), installing it ([`ensure`], idempotent,
//! saying what it runs) and `cargo xtask doctor` ([`doctor`]), which lists all of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use crate::{root, run_with_timeout, target_dir};

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sudo() -> &'static str {
    if is_root() {
        ""
    } else {
        "sudo "
    }
}

/// Run a shell line, echoing it first ("xtask: running: ..."). Its output goes to stderr:
/// stdout stays for what the command itself prints (`run --print-cmd`'s command line).
fn run_shown(line: &str) -> Result<(), String> {
    eprintln!("xtask: running: {line}");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(root())
        .stdout(std::io::stderr())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("`{line}` failed"))
    }
}

/// Make sure `cmd` exists, installing Debian package `pkg` if not.
pub fn ensure_apt(cmd: &str, pkg: &str) -> Result<(), String> {
    if have(cmd) {
        return Ok(());
    }
    apt_install(pkg)?;
    if have(cmd) {
        Ok(())
    } else {
        Err(format!(
            "installed `{pkg}` but `{cmd}` is still missing; run: sudo apt-get install -y {pkg}"
        ))
    }
}

fn apt_install(pkg: &str) -> Result<(), String> {
    // One install at a time (tests install from several threads), one `apt-get update` per run.
    static APT: Mutex<()> = Mutex::new(());
    static UPDATE: Once = Once::new();
    let _one = APT.lock().unwrap_or_else(|e| e.into_inner());
    let sudo = sudo();
    UPDATE.call_once(|| {
        let _ = run_shown(&format!("{sudo}apt-get update -qq"));
    });
    run_shown(&format!(
        "DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq --no-install-recommends {pkg} >/dev/null"
    ))
    .map_err(|_| format!("could not install `{pkg}`; run: sudo apt-get install -y {pkg}"))
}

/// One prerequisite of some command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `rustup target add x86_64-unknown-none`: the image.
    RustTarget,
    /// `qemu-system-x86_64` (Debian `qemu-system-x86`): runs the image.
    Qemu,
    /// `rustup target add aarch64-unknown-none-softfloat`: the aarch64 image.
    RustTargetArm,
    /// `qemu-system-aarch64` (Debian `qemu-system-arm`): runs the aarch64 image.
    QemuArm,
    /// `objcopy` (Debian `binutils`): strips the image after linking.
    Binutils,
    /// `wrk`: load generator of the benchmarks and soaks.
    Wrk,
    /// `nginx`: the reference server of `bench host`.
    Nginx,
    /// `curl`: the reference client of `bench broker`.
    Curl,
    /// `node` + `npm` (Debian `nodejs`, `npm`): the OAuth2 test authority.
    Node,
    /// The authority's pinned Node packages (`npm ci` in `tests/peers/authority`).
    NodePackages,
    /// `python3` with `venv` (Debian `python3-venv`): the SDK venv.
    Python,
    /// A venv under `target/test-tools/py/venv` with the pinned Azure SDK for Python.
    PythonVenv,
    /// A nightly toolchain (cargo-fuzz builds with `-Z` flags).
    Nightly,
    /// `cargo-fuzz`.
    CargoFuzz,
    /// `cargo-deb`: the Debian package of the daemon.
    CargoDeb,
    /// `systemd-analyze` (Debian `systemd`): checks the service unit.
    SystemdAnalyze,
    /// root, `ip` and `unshare`: the tests' own network namespaces (169.254.169.254 on a tap).
    Namespaces,
    /// The real IMDS clients of the `clients` tests: Debian 12's cloud-init and waagent
    /// packages (`apt-get download`, `dpkg-deb -x` under `target/test-tools/debs/`, nothing
    /// installed system-wide) and a venv `target/test-tools/py-clients` with the Python
    /// packages they import (`tests/py/requirements-clients.txt`).
    AzureClients,
}

impl Need {
    /// Every prerequisite, in install order.
    pub const ALL: [Need; 18] = [
        Need::RustTarget,
        Need::Qemu,
        Need::RustTargetArm,
        Need::QemuArm,
        Need::Binutils,
        Need::Wrk,
        Need::Nginx,
        Need::Curl,
        Need::Node,
        Need::NodePackages,
        Need::Python,
        Need::PythonVenv,
        Need::Nightly,
        Need::CargoFuzz,
        Need::CargoDeb,
        Need::SystemdAnalyze,
        Need::Namespaces,
        Need::AzureClients,
    ];

    /// Its name in `doctor`'s table.
    pub fn name(self) -> &'static str {
        match self {
            Need::RustTarget => "rust target x86_64-unknown-none",
            Need::Qemu => "QEMU (qemu-system-x86_64)",
            Need::RustTargetArm => "rust target aarch64-unknown-none-softfloat",
            Need::QemuArm => "QEMU (qemu-system-aarch64)",
            Need::Binutils => "objcopy (binutils)",
            Need::Wrk => "wrk",
            Need::Nginx => "nginx",
            Need::Curl => "curl",
            Need::Node => "Node.js + npm",
            Need::NodePackages => "Node packages (test authority)",
            Need::Python => "python3 + venv",
            Need::PythonVenv => "Python venv (azure-identity)",
            Need::Nightly => "nightly toolchain",
            Need::CargoFuzz => "cargo-fuzz",
            Need::CargoDeb => "cargo-deb",
            Need::SystemdAnalyze => "systemd-analyze",
            Need::Namespaces => "root + ip + unshare",
            Need::AzureClients => "cloud-init + waagent (extracted)",
        }
    }

    /// The commands that need it.
    pub fn used_by(self) -> &'static str {
        match self {
            Need::RustTarget => "run, size, bench boot|broker, soak, test",
            Need::Qemu => "run, bench boot|broker, soak, test",
            Need::RustTargetArm => "run --arch aarch64, size, bench boot --arch aarch64, test",
            Need::QemuArm => "run --arch aarch64, bench boot --arch aarch64, test",
            Need::Binutils => "run, size, bench boot|broker, soak, test",
            Need::Wrk => "bench host|broker",
            Need::Nginx => "bench host",
            Need::Curl => "bench broker, test",
            Need::Node | Need::NodePackages => "bench broker, test",
            Need::Python | Need::PythonVenv => "test",
            Need::Nightly | Need::CargoFuzz => "fuzz, test",
            Need::CargoDeb => "deb, test",
            Need::SystemdAnalyze => "test",
            Need::Namespaces => "test",
            Need::AzureClients => "test",
        }
    }

    /// The command line that installs it.
    pub fn install_hint(self) -> String {
        let sudo = sudo();
        match self {
            Need::RustTarget => "rustup target add x86_64-unknown-none".into(),
            Need::Qemu => format!("{sudo}apt-get install -y qemu-system-x86"),
            Need::RustTargetArm => format!("rustup target add {TARGET_ARM}"),
            Need::QemuArm => format!("{sudo}apt-get install -y qemu-system-arm"),
            Need::Binutils => format!("{sudo}apt-get install -y binutils"),
            Need::Wrk => format!("{sudo}apt-get install -y wrk"),
            Need::Nginx => format!("{sudo}apt-get install -y nginx-light"),
            Need::Curl => format!("{sudo}apt-get install -y curl"),
            Need::Node => format!("{sudo}apt-get install -y nodejs npm"),
            Need::NodePackages => {
                "npm ci --omit=dev (in tests/peers/authority; `cargo xtask doctor --install`)".into()
            }
            Need::Python => format!("{sudo}apt-get install -y python3 python3-venv"),
            Need::PythonVenv => {
                "python3 -m venv target/test-tools/py/venv && pip install -r tests/py/requirements.txt (`cargo xtask doctor --install`)".into()
            }
            Need::Nightly => "rustup toolchain install nightly --profile minimal".into(),
            Need::CargoFuzz => "cargo install cargo-fuzz --locked".into(),
            Need::CargoDeb => "cargo install cargo-deb --locked".into(),
            Need::SystemdAnalyze => format!("{sudo}apt-get install -y systemd"),
            Need::Namespaces => {
                format!("run as root; {sudo}apt-get install -y iproute2 util-linux")
            }
            Need::AzureClients => format!(
                "apt-get download {CLOUD_INIT_DEB} {WAAGENT_DEB}; dpkg-deb -x each into target/test-tools/debs/<name>/; \
                 python3 -m venv target/test-tools/py-clients && pip install -r tests/py/requirements-clients.txt (`cargo xtask doctor --install`)"
            ),
        }
    }

    /// Whether it is there.
    pub fn present(self) -> bool {
        match self {
            Need::RustTarget => rustup_lists(&["target", "list", "--installed"], TARGET),
            Need::Qemu => have("qemu-system-x86_64"),
            Need::RustTargetArm => rustup_lists(&["target", "list", "--installed"], TARGET_ARM),
            Need::QemuArm => have("qemu-system-aarch64"),
            Need::Binutils => have("objcopy"),
            Need::Wrk => have("wrk"),
            Need::Nginx => have("nginx"),
            Need::Curl => have("curl"),
            Need::Node => have("node") && have("npm"),
            Need::NodePackages => crate::authority::node_packages_ready(),
            Need::Python => python_has_venv(),
            Need::PythonVenv => python_venv_ready(),
            Need::Nightly => rustup_lists(&["toolchain", "list"], "nightly"),
            Need::CargoFuzz => cargo_subcommand("fuzz"),
            Need::CargoDeb => cargo_subcommand("deb"),
            Need::SystemdAnalyze => have("systemd-analyze"),
            Need::Namespaces => is_root() && have("ip") && have("unshare"),
            Need::AzureClients => azure_clients_ready(),
        }
    }

    /// Install it (what it runs is printed). Root cannot be installed: that is an error.
    pub fn install(self) -> Result<(), String> {
        match self {
            Need::RustTarget => run_shown("rustup target add x86_64-unknown-none"),
            Need::Qemu => ensure_apt("qemu-system-x86_64", "qemu-system-x86"),
            Need::RustTargetArm => run_shown(&format!("rustup target add {TARGET_ARM}")),
            Need::QemuArm => ensure_apt("qemu-system-aarch64", "qemu-system-arm"),
            Need::Binutils => ensure_apt("objcopy", "binutils"),
            Need::Wrk => ensure_apt("wrk", "wrk"),
            Need::Nginx => ensure_apt("nginx", "nginx-light"),
            Need::Curl => ensure_apt("curl", "curl"),
            Need::Node => {
                ensure_apt("node", "nodejs")?;
                ensure_apt("npm", "npm")
            }
            Need::NodePackages => crate::authority::try_ensure_node_packages().map(|_| ()),
            Need::Python => {
                ensure_apt("python3", "python3")?;
                if python_has_venv() {
                    Ok(())
                } else {
                    apt_install("python3-venv")
                }
            }
            Need::PythonVenv => python_venv().map(|_| ()),
            Need::Nightly => run_shown("rustup toolchain install nightly --profile minimal"),
            Need::CargoFuzz => run_shown("cargo install cargo-fuzz --locked"),
            Need::CargoDeb => run_shown("cargo install cargo-deb --locked"),
            Need::SystemdAnalyze => ensure_apt("systemd-analyze", "systemd"),
            Need::Namespaces => {
                if !is_root() {
                    return Err("the network-namespace tests need root (run as root)".into());
                }
                ensure_apt("ip", "iproute2")?;
                ensure_apt("unshare", "util-linux")
            }
            Need::AzureClients => azure_clients().map(|_| ()),
        }
    }

    /// What it depends on (installed first).
    fn after(self) -> &'static [Need] {
        match self {
            Need::NodePackages => &[Need::Node],
            Need::PythonVenv | Need::AzureClients => &[Need::Python],
            Need::CargoFuzz => &[Need::Nightly],
            _ => &[],
        }
    }
}

const TARGET: &str = "x86_64-unknown-none";
const TARGET_ARM: &str = "aarch64-unknown-none-softfloat";

fn rustup_lists(args: &[&str], needle: &str) -> bool {
    Command::new("rustup")
        .args(args)
        .current_dir(root())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(needle))
}

fn cargo_subcommand(sub: &str) -> bool {
    Command::new("cargo")
        .args([sub, "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has_venv() -> bool {
    // Debian's python3 lacks ensurepip without python3-venv: `-m venv` then fails.
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make sure every need in `needs` (and what they depend on) is there, installing what is
/// missing and saying what it runs.
pub fn ensure(needs: &[Need]) -> Result<(), String> {
    for &need in needs {
        ensure(need.after())?;
        // One install at a time (tests ask from several threads); checked again under the lock.
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        if !need.present() {
            eprintln!(
                "xtask: {} is missing (needed by: {}); installing it",
                need.name(),
                need.used_by()
            );
            need.install().map_err(|e| {
                format!(
                    "{}: {e}\n  install it with: {}",
                    need.name(),
                    need.install_hint()
                )
            })?;
        }
    }
    Ok(())
}

/// What `cargo xtask <command> <args>` needs before it runs.
pub fn needs_of(command: &str, args: &[String]) -> Vec<Need> {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let sub = args.first().map(String::as_str);
    match command {
        "run" if has("--host") => vec![],
        // `--arch aarch64`: the flat Image is made by xtask itself (no objcopy).
        "run"
            if args
                .windows(2)
                .any(|w| w[0] == "--arch" && w[1] == "aarch64") =>
        {
            vec![Need::RustTargetArm, Need::QemuArm]
        }
        "run" => vec![Need::RustTarget, Need::Binutils, Need::Qemu],
        // The aarch64 variants too (qemu/size-budget.json).
        "size" => vec![Need::RustTarget, Need::Binutils, Need::RustTargetArm],
        "bench"
            if sub == Some("boot")
                && args
                    .windows(2)
                    .any(|w| w[0] == "--arch" && w[1] == "aarch64") =>
        {
            vec![Need::RustTargetArm, Need::QemuArm]
        }
        "bench" => match sub {
            Some("boot") => vec![Need::RustTarget, Need::Binutils, Need::Qemu],
            Some("broker") => vec![
                Need::RustTarget,
                Need::Binutils,
                Need::Qemu,
                Need::Curl,
                Need::Wrk,
                Need::NodePackages,
            ],
            _ => vec![Need::Wrk, Need::Nginx],
        },
        "soak" => vec![Need::RustTarget, Need::Binutils, Need::Qemu],
        "fuzz" => vec![Need::CargoFuzz],
        "deb" => vec![Need::CargoDeb],
        "test" => vec![
            Need::RustTarget,
            Need::Binutils,
            Need::Qemu,
            Need::RustTargetArm,
            Need::QemuArm,
            Need::Curl,
            Need::NodePackages,
            Need::PythonVenv,
            Need::CargoFuzz,
            Need::CargoDeb,
            Need::SystemdAnalyze,
            Need::Namespaces,
            Need::AzureClients,
        ],
        // config, keygen, doctor: Rust alone.
        _ => vec![],
    }
}

/// `cargo xtask doctor [--install]`: each prerequisite, whether it is there, what needs it and
/// the command that installs it; with `--install`, install what is missing.
pub fn doctor(install: bool) -> Result<(), String> {
    let mut missing = Vec::new();
    println!(
        "{:<32} {:<8} {:<40} install with",
        "prerequisite", "status", "needed by"
    );
    for need in Need::ALL {
        let ok = need.present();
        if !ok {
            missing.push(need);
        }
        println!(
            "{:<32} {:<8} {:<40} {}",
            need.name(),
            if ok { "ok" } else { "MISSING" },
            need.used_by(),
            if ok {
                String::new()
            } else {
                need.install_hint()
            }
        );
    }
    if missing.is_empty() {
        println!("\neverything is there");
        return Ok(());
    }
    if !install {
        println!(
            "\n{} missing: `cargo xtask doctor --install` installs them (each command also installs what it needs)",
            missing.len()
        );
        return Ok(());
    }
    let mut failed = Vec::new();
    for need in missing {
        if let Err(e) = ensure(&[need]) {
            eprintln!("xtask doctor: {e}");
            failed.push(need.name());
        }
    }
    if failed.is_empty() {
        println!("\neverything is installed");
        Ok(())
    } else {
        Err(format!("not installed: {}", failed.join(", ")))
    }
}

// ------------------------------------------------------------------------------------------
// The Python SDK venv

/// How long installing the SDK may take (PyPI downloads).
pub const PIP_TIMEOUT: Duration = Duration::from_secs(600);

/// `tests/py/requirements.txt`: the pinned Python SDK packages.
pub fn python_requirements() -> PathBuf {
    root().join("tests/py/requirements.txt")
}

fn python_venv_dir() -> PathBuf {
    target_dir().join("test-tools/py")
}

fn python_venv_ready() -> bool {
    venv_ready(&python_venv_dir().join("venv"), &python_requirements())
}

/// Whether the venv `venv` exists and was filled from `reqs` as it reads now.
fn venv_ready(venv: &Path, reqs: &Path) -> bool {
    let reqs = std::fs::read_to_string(reqs).unwrap_or_default();
    venv.join("bin/python").exists()
        && std::fs::read_to_string(venv.join(".imds-requirements")).is_ok_and(|m| m == reqs)
}

/// The venv with the pinned Azure SDK for Python (`target/test-tools/py/venv`), created and
/// filled unless it is already there for these requirements (a marker holds the requirements
/// it was built from; a file lock keeps parallel test processes from installing at once).
pub fn python_venv() -> Result<PathBuf, String> {
    let dir = python_venv_dir();
    venv_with(&dir, &dir.join("venv"), &python_requirements())
}

/// The venv `venv` filled from the requirements file `reqs_path`, unless it already is
/// (`lock_dir` holds the install lock).
fn venv_with(lock_dir: &Path, venv: &Path, reqs_path: &Path) -> Result<PathBuf, String> {
    let dir = lock_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let venv = venv.to_path_buf();
    let python = venv.join("bin/python");
    let reqs =
        std::fs::read_to_string(reqs_path).map_err(|e| format!("{}: {e}", reqs_path.display()))?;
    let lock =
        std::fs::File::create(dir.join(".install.lock")).map_err(|e| format!("lock file: {e}"))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", dir.display()))?;
    if venv_ready(&venv, reqs_path) {
        return Ok(venv);
    }
    if !python.exists() {
        eprintln!("xtask: running: python3 -m venv {}", venv.display());
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&venv);
        run_with_timeout(c, PIP_TIMEOUT)
            .map_err(|e| format!("python3 -m venv {}: {e}", venv.display()))?;
    }
    eprintln!(
        "xtask: running: {} -m pip install -r {}",
        python.display(),
        reqs_path.display()
    );
    let mut c = Command::new(&python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
    ])
    .arg(reqs_path);
    run_with_timeout(c, PIP_TIMEOUT)
        .map_err(|e| format!("pip install -r {} (needs PyPI): {e}", reqs_path.display()))?;
    std::fs::write(venv.join(".imds-requirements"), &reqs)
        .map_err(|e| format!("venv marker: {e}"))?;
    Ok(venv)
}

// ------------------------------------------------------------------------------------------
// The real IMDS clients (issue 12): cloud-init and the Azure Linux agent, unmodified

/// Debian 12's cloud-init, exactly the version whose IMDS code INSTANCE.md §3 read.
pub const CLOUD_INIT_DEB: &str = "cloud-init=22.4.2-1+deb12u4";
/// Debian 12's Azure Linux agent (WALinuxAgent).
pub const WAAGENT_DEB: &str = "waagent=2.7.3.0-4.1";

/// `tests/py/requirements-clients.txt`: the Python packages cloud-init and waagent import.
pub fn clients_requirements() -> PathBuf {
    root().join("tests/py/requirements-clients.txt")
}

/// Where the clients live: `debs/<name>/` (each package extracted) and `py-clients/` (the
/// venv), under `target/test-tools/`.
#[derive(Debug, Clone)]
pub struct AzureClients {
    /// The venv's `python`.
    pub python: PathBuf,
    /// cloud-init's `dist-packages` (`cloudinit/`), for `PYTHONPATH`.
    pub cloud_init: PathBuf,
    /// waagent's `dist-packages` (`azurelinuxagent/`), for `PYTHONPATH`.
    pub waagent: PathBuf,
}

fn clients_dir() -> PathBuf {
    target_dir().join("test-tools")
}

fn azure_clients_paths() -> AzureClients {
    let dir = clients_dir();
    let pkgs = |name: &str| {
        dir.join("debs")
            .join(name)
            .join("usr/lib/python3/dist-packages")
    };
    AzureClients {
        python: dir.join("py-clients/bin/python"),
        cloud_init: pkgs("cloud-init"),
        waagent: pkgs("waagent"),
    }
}

/// The marker of an extracted package: the exact `name=version` it was extracted from.
const DEB_MARKER: &str = ".imds-deb";

fn deb_ready(spec: &str) -> bool {
    let name = spec.split('=').next().unwrap_or(spec);
    std::fs::read_to_string(clients_dir().join("debs").join(name).join(DEB_MARKER))
        .is_ok_and(|m| m == spec)
}

fn azure_clients_ready() -> bool {
    let p = azure_clients_paths();
    deb_ready(CLOUD_INIT_DEB)
        && deb_ready(WAAGENT_DEB)
        && p.cloud_init
            .join("cloudinit/sources/DataSourceAzure.py")
            .exists()
        && p.waagent
            .join("azurelinuxagent/common/protocol/imds.py")
            .exists()
        && venv_ready(&clients_dir().join("py-clients"), &clients_requirements())
}

/// `apt-get download NAME=VERSION` into a scratch directory, then `dpkg-deb -x` into
/// `target/test-tools/debs/NAME/` (replacing what was there).
fn extract_deb(spec: &str) -> Result<(), String> {
    if deb_ready(spec) {
        return Ok(());
    }
    let name = spec.split('=').next().unwrap_or(spec);
    let debs = clients_dir().join("debs");
    let scratch = debs.join(format!(".download-{name}"));
    let dest = debs.join(name);
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let download = format!(
        "cd '{}' && apt-get download -qq '{spec}'",
        scratch.display()
    );
    if run_shown(&download).is_err() {
        // No package lists yet (a fresh container): fetch them once, then retry.
        let _ = run_shown(&format!("{}apt-get update -qq", sudo()));
        run_shown(&download).map_err(|e| format!("{e} (is {spec} still in Debian 12?)"))?;
    }
    let deb = std::fs::read_dir(&scratch)
        .map_err(|e| format!("{}: {e}", scratch.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {spec}: no .deb"))?;
    run_shown(&format!(
        "dpkg-deb -x '{}' '{}'",
        deb.display(),
        dest.display()
    ))?;
    std::fs::write(dest.join(DEB_MARKER), spec).map_err(|e| format!("deb marker: {e}"))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// cloud-init and waagent extracted and their venv filled (each step skipped when already
/// done for these versions and requirements; a file lock keeps parallel test processes from
/// installing at once).
pub fn azure_clients() -> Result<AzureClients, String> {
    let dir = clients_dir();
    std::fs::create_dir_all(dir.join("debs")).map_err(|e| format!("{}: {e}", dir.display()))?;
    {
        let lock = std::fs::File::create(dir.join("debs/.install.lock"))
            .map_err(|e| format!("lock file: {e}"))?;
        lock.lock()
            .map_err(|e| format!("locking {}: {e}", dir.display()))?;
        extract_deb(CLOUD_INIT_DEB)?;
        extract_deb(WAAGENT_DEB)?;
    }
    venv_with(&dir, &dir.join("py-clients"), &clients_requirements())?;
    Ok(azure_clients_paths())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_command_that_boots_the_image_needs_the_target_and_qemu() {
        for (cmd, a) in [
            ("run", args(&[])),
            ("run", args(&["--print-cmd"])),
            ("run", args(&["--arch", "x86_64"])),
            ("bench", args(&["boot"])),
            ("bench", args(&["broker"])),
            ("soak", args(&[])),
            ("test", args(&[])),
        ] {
            let n = needs_of(cmd, &a);
            assert!(n.contains(&Need::RustTarget), "{cmd} {a:?}");
            assert!(n.contains(&Need::Qemu), "{cmd} {a:?}");
        }
        assert!(needs_of("run", &args(&["--host"])).is_empty());
        for (cmd, a) in [
            ("run", args(&["--arch", "aarch64"])),
            ("run", args(&["--print-cmd", "--arch", "aarch64"])),
            ("test", args(&[])),
        ] {
            let n = needs_of(cmd, &a);
            assert!(n.contains(&Need::RustTargetArm), "{cmd} {a:?}");
            assert!(n.contains(&Need::QemuArm), "{cmd} {a:?}");
        }
        assert!(!needs_of("run", &args(&[])).contains(&Need::QemuArm));
        assert!(needs_of("bench", &args(&["boot", "--arch", "aarch64"])).contains(&Need::QemuArm));
        assert_eq!(
            needs_of("size", &args(&[])),
            [Need::RustTarget, Need::Binutils, Need::RustTargetArm]
        );
        assert_eq!(
            needs_of("bench", &args(&["host"])),
            [Need::Wrk, Need::Nginx]
        );
        assert_eq!(needs_of("fuzz", &args(&[])), [Need::CargoFuzz]);
        assert!(needs_of("keygen", &args(&[])).is_empty());
    }

    #[test]
    fn dependencies_come_first_and_every_need_has_a_hint() {
        assert_eq!(Need::CargoFuzz.after(), [Need::Nightly]);
        assert_eq!(Need::AzureClients.after(), [Need::Python]);
        assert!(needs_of("test", &[]).contains(&Need::AzureClients));
        assert!(Need::AzureClients
            .install_hint()
            .contains("cloud-init=22.4.2-1+deb12u4"));
        for need in Need::ALL {
            assert!(!need.install_hint().is_empty(), "{need:?}");
            assert!(!need.used_by().is_empty(), "{need:?}");
            for dep in need.after() {
                let pos = |n: Need| Need::ALL.iter().position(|x| *x == n).unwrap();
                assert!(pos(*dep) < pos(need), "{dep:?} before {need:?}");
            }
        }
    }
}
