//! Real Azure SDK clients, installed on demand and run unmodified against an IMDS endpoint.
//!
//! Python: a venv under `target/test-tools/py/venv` with the pinned packages of
//! `tests/py/requirements.txt`, and `tests/py/get_token.py`, which asks azure-identity's
//! `ManagedIdentityCredential` for a token from any base URL (the host daemon on loopback, the
//! unikernel behind QEMU's `hostfwd`).

use crate::root;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use xtask::run_with_timeout;

/// How long one SDK run may take. azure-identity retries 5xx and 429 with back-off for ~25 s,
/// so a daemon that answers wrongly still ends well within this.
pub const SDK_TIMEOUT: Duration = Duration::from_secs(120);

/// The resource azure-identity derives from a scope: the scope without its `/.default` suffix.
pub fn scope_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

/// The venv with the pinned Azure SDK for Python, created and filled on first use
/// ([`xtask::setup::python_venv`]). Panics with pip's output when the install fails: a test
/// that needs the SDK must fail, not skip, without it.
pub fn ensure_python_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        xtask::setup::ensure(&[xtask::setup::Need::Python])
            .and_then(|()| xtask::setup::python_venv())
            .unwrap_or_else(|e| panic!("setting up the Python SDK venv failed: {e}"))
    })
    .clone()
}

/// Get a token with azure-identity's `ManagedIdentityCredential` from the IMDS endpoint at
/// `base_url` (e.g. `http://127.0.0.1:8080`) for `scope` (e.g.
/// `https://management.azure.com/.default`): system-assigned without `client_id`, else that
/// user-assigned identity. Returns `{"token", "expires_on", "sdk"}` as printed by
/// `tests/py/get_token.py`, or the SDK's error text.
pub fn python_get_token(
    base_url: &str,
    scope: &str,
    client_id: Option<&str>,
) -> Result<Value, String> {
    let venv = ensure_python_venv();
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(root().join("tests/py/get_token.py"))
        .arg(base_url)
        .arg(scope);
    if let Some(id) = client_id {
        c.arg(id);
    }
    // Loopback only: no proxy may see the request.
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(var);
    }
    c.env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(c, SDK_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("get_token.py printed no JSON ({e}): {stdout}"))
}

/// Every variable that picks a managed-identity protocol or a proxy: cleared before a client
/// runs with one protocol's variables ([`python_host_token`]).
pub const IDENTITY_AND_PROXY_VARS: &[&str] = &[
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "DEFAULT_IDENTITY_CLIENT_ID",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZUREPS_HOST_ENVIRONMENT",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Get a token with `client` (`sync`: azure-identity, `aio`: azure-identity's aio credential,
/// `msal`: MSAL Python's `ManagedIdentityClient`) over the protocol that `env` selects (only
/// those variables are set: every other identity and proxy variable is cleared). Returns
/// `{"token", "expires_on", "client"}` as printed by `tests/py/host_token.py`, or the client's
/// error text.
pub fn python_host_token(
    client: &str,
    env: &[(&str, &str)],
    scope: &str,
    client_id: Option<&str>,
) -> Result<Value, String> {
    let venv = ensure_python_venv();
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(root().join("tests/py/host_token.py"))
        .arg(client)
        .arg(scope);
    if let Some(id) = client_id {
        c.arg(id);
    }
    for var in IDENTITY_AND_PROXY_VARS {
        c.env_remove(var);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(c, SDK_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .map_err(|e| format!("host_token.py printed no JSON ({e}): {stdout}"))
}
