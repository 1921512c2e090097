//! A real OAuth2 authority for broker mode (used by the tests, as `imds_tests::authority`, and by
//! `cargo xtask bench broker`): node `oidc-provider` (tests/peers/authority), started
//! on loopback with a throw-away PKI and TLS 1.3 only, plus the client side needed to talk to it
//! (RFC 7523 client assertions signed with ES256 / PS256 / RS256 keys, a rustls client that
//! trusts only the throw-away CA, `curl`), and verification of the access tokens it issues.
//!
//! Token endpoints (the agent is configured with the full URL):
//! - v1: `https://127.0.0.1:PORT/<tenant>/oauth2/token` — Entra v1 response shape (numbers as
//!   strings, `expires_on`, `resource`).
//! - v2: `https://127.0.0.1:PORT/<tenant>/oauth2/v2.0/token` — oidc-provider's native response
//!   (JSON numbers, `scope`, no `expires_on`).
//!
//! Both take both request styles, `resource=R` and `scope=R/.default`; the latter is mapped to the
//! resource indicator R by the provider's `features.resourceIndicators.defaultResource` hook.
//! Access tokens are JWTs (`typ` `at+jwt`) with `aud` = R, signed with the provider's own key
//! (ES256 by default; RS256 / PS256 selectable), whose JWKS is at [`Authority::jwks_url`].

use crate::http::pct;
use crate::http::{connect, read_response, Response};
use crate::{root, target_dir};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `npm ci` may take (registry downloads).
pub const NPM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the authority may take to print its listening line. Node loads oidc-provider in
/// about a second; a 2-core machine busy with builds and guests has taken over 30 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Read/write timeout of one HTTPS exchange with the authority.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The `client_assertion_type` of RFC 7523 client authentication.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The hostnames / addresses the valid server certificate covers. `10.0.2.2` is the host as seen
/// from a QEMU guest with user networking (slirp forwards it to the host's 127.0.0.1).
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "10.0.2.2"];

/// `tests/peers/authority`.
pub fn peer_dir() -> PathBuf {
    root().join("tests/peers/authority")
}

/// Send raw bytes on a new connection and read one response.
fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    read_response(&mut s, request.starts_with(b"HEAD")).expect("read response")
}

// ------------------------------------------------------------------------------------------
// node packages

/// Installs the pinned node packages (`npm ci` from package-lock.json) into
/// `tests/peers/authority/node_modules` unless they are already there for this lock file.
/// Idempotent and safe across parallel test processes (file lock). Panics with npm's output when
/// the install fails: a test that needs the authority must fail, not skip, without it.
pub fn ensure_node_packages() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        crate::setup::ensure(&[crate::setup::Need::Node])
            .and_then(|()| try_ensure_node_packages())
            .unwrap_or_else(|e| panic!("installing the authority's node packages failed: {e}"))
    })
    .clone()
}

/// Whether `node_modules` holds the packages of the current lock file.
pub fn node_packages_ready() -> bool {
    let dir = peer_dir();
    let marker = dir.join("node_modules/.imds-package-lock.json");
    dir.join("node_modules/oidc-provider/package.json").exists()
        && std::fs::read_to_string(dir.join("package-lock.json"))
            .is_ok_and(|lock| std::fs::read_to_string(&marker).is_ok_and(|m| m == lock))
}

/// [`ensure_node_packages`] without the panic: `npm ci` unless the packages are there.
pub fn try_ensure_node_packages() -> Result<PathBuf, String> {
    let dir = peer_dir();
    let modules = dir.join("node_modules");
    let lock_path = dir.join("package-lock.json");
    let lock_text =
        std::fs::read_to_string(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    if node_packages_ready() {
        return Ok(modules);
    }
    let lock_dir = target_dir().join("test-tools");
    std::fs::create_dir_all(&lock_dir).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(lock_dir.join(".authority-npm.lock"))
        .map_err(|e| format!("lock file: {e}"))?;
    lock.lock().map_err(|e| format!("locking: {e}"))?;
    if node_packages_ready() {
        return Ok(modules);
    }
    eprintln!("xtask: running: npm ci --omit=dev (in {})", dir.display());
    let mut c = Command::new("npm");
    c.current_dir(&dir).args([
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--omit=dev",
    ]);
    crate::run_with_timeout(c, NPM_TIMEOUT)
        .map_err(|e| format!("npm ci in {} (needs npm): {e}", dir.display()))?;
    std::fs::write(modules.join(".imds-package-lock.json"), &lock_text)
        .map_err(|e| format!("npm marker: {e}"))?;
    Ok(modules)
}

// ------------------------------------------------------------------------------------------
// algorithms and keys

/// A JWS algorithm (client assertions, access tokens) and with it the key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 / SHA-256.
    ES256,
    /// RSASSA-PSS / SHA-256, salt 32 (what Entra ID takes with `x5t#S256`).
    PS256,
    /// RSASSA-PKCS1-v1_5 / SHA-256.
    RS256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::PS256 => "PS256",
            Alg::RS256 => "RS256",
        }
    }
}

/// The private half of a key: P-256 (RustCrypto `p256`) or RSA (`ring`, whose bignum code is
/// optimised even in debug builds).
#[derive(Clone)]
enum Secret {
    Ec(p256::ecdsa::SigningKey),
    Rsa(Arc<ring::signature::RsaKeyPair>),
}

/// A client's key pair for `private_key_jwt`: PKCS#8 PEM for the agent's config, the public JWK
/// for the authority, optionally a self-signed certificate (`x5t#S256` credentials).
#[derive(Clone)]
pub struct ClientKey {
    pub alg: Alg,
    pub kid: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// The public JWK with `kid`, `alg`, `use`.
    pub public_jwk: Value,
    /// A self-signed certificate for the key (see [`ClientKey::with_certificate`]).
    pub cert_pem: Option<String>,
    /// base64url SHA-256 of the certificate's DER.
    pub x5t_s256: Option<String>,
    secret: Secret,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("x5t_s256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A fresh key: P-256 for ES256, RSA 2048 for PS256 / RS256 (see [`rsa_pkcs8_pem`]).
    pub fn generate(alg: Alg, kid: &str) -> ClientKey {
        match alg {
            Alg::ES256 => {
                use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
                let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
                let pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
                Self::from_secret(alg, kid, Secret::Ec(sk), pem)
            }
            Alg::PS256 | Alg::RS256 => Self::from_pem(alg, kid, &rsa_pkcs8_pem()).unwrap(),
        }
    }

    /// A key from a PKCS#8 PEM (P-256 for ES256, RSA for PS256 / RS256).
    pub fn from_pem(alg: Alg, kid: &str, pem: &str) -> Result<ClientKey, String> {
        use p256::pkcs8::DecodePrivateKey as _;
        use rustls::pki_types::PrivatePkcs8KeyDer;
        let secret = match alg {
            Alg::ES256 => {
                Secret::Ec(p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?)
            }
            Alg::PS256 | Alg::RS256 => {
                let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| format!("PKCS#8 PEM: {e}"))?;
                Secret::Rsa(Arc::new(
                    ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                        .map_err(|e| format!("RSA key: {e}"))?,
                ))
            }
        };
        Ok(Self::from_secret(alg, kid, secret, pem.to_string()))
    }

    fn from_secret(alg: Alg, kid: &str, secret: Secret, private_pem: String) -> ClientKey {
        let mut public_jwk = match &secret {
            Secret::Ec(sk) => {
                let point = sk.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": B64.encode(point.x().unwrap()),
                    "y": B64.encode(point.y().unwrap()),
                })
            }
            Secret::Rsa(kp) => {
                let c: ring::signature::RsaPublicKeyComponents<Vec<u8>> = kp.public().into();
                json!({ "kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e) })
            }
        };
        public_jwk["kid"] = json!(kid);
        public_jwk["alg"] = json!(alg.name());
        public_jwk["use"] = json!("sig");
        ClientKey {
            alg,
            kid: kid.to_string(),
            private_pem,
            public_jwk,
            cert_pem: None,
            x5t_s256: None,
            secret,
        }
    }

    /// Adds a self-signed certificate for this key (CN = `subject`) and its `x5t#S256`.
    pub fn with_certificate(mut self, subject: &str) -> ClientKey {
        let kp = rcgen_key(&self.private_pem, self.alg != Alg::ES256);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(subject);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params
            .self_signed(&kp)
            .expect("self-signed client certificate");
        self.x5t_s256 = Some(B64.encode(Sha256::digest(cert.der())));
        self.cert_pem = Some(cert.pem());
        self
    }

    /// Signs `header.claims` as a compact JWS with this key's algorithm (`alg` is set here).
    pub fn sign_jws(&self, header: &Value, claims: &Value) -> String {
        let mut header = header.clone();
        header["alg"] = json!(self.alg.name());
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = sign(&self.secret, self.alg, input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }

    /// An RFC 7523 client assertion as PROTOCOL.md §5 has it: `aud` = the token endpoint URL,
    /// `iss` = `sub` = client id, random `jti`, `iat` = `nbf` = now, `exp` = now + 10 min; header
    /// `kid`, `typ` JWT, and `x5t#S256` when the key has a certificate.
    pub fn client_assertion(&self, client_id: &str, token_url: &str) -> String {
        let now = unix_now();
        let mut header = json!({ "typ": "JWT", "kid": self.kid });
        if let Some(x5t) = &self.x5t_s256 {
            header["x5t#S256"] = json!(x5t);
        }
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_id(),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        });
        self.sign_jws(&header, &claims)
    }
}

fn sign(secret: &Secret, alg: Alg, msg: &[u8]) -> Vec<u8> {
    use p256::ecdsa::signature::Signer as _;
    match (secret, alg) {
        (Secret::Ec(sk), Alg::ES256) => {
            let sig: p256::ecdsa::Signature = sk.sign(msg);
            sig.to_bytes().to_vec()
        }
        (Secret::Rsa(kp), Alg::PS256 | Alg::RS256) => {
            let padding: &'static dyn ring::signature::RsaEncoding = if alg == Alg::PS256 {
                &ring::signature::RSA_PSS_SHA256
            } else {
                &ring::signature::RSA_PKCS1_SHA256
            };
            let mut sig = vec![0u8; kp.public().modulus_len()];
            kp.sign(padding, &ring::rand::SystemRandom::new(), msg, &mut sig)
                .expect("RSA signature");
            sig
        }
        _ => panic!("key type does not match {alg:?}"),
    }
}

/// A fresh RSA 2048 private key, PKCS#8 PEM. Generated by `node` (needed for the authority
/// anyway) or else the `openssl` CLI: pure-Rust RSA key generation takes tens of seconds in a
/// debug build, and `ring` cannot generate RSA keys.
pub fn rsa_pkcs8_pem() -> String {
    const JS: &str = "process.stdout.write(require('crypto').generateKeyPairSync('rsa', \
                      {modulusLength: 2048}).privateKey.export({format: 'pem', type: 'pkcs8'}))";
    let mut node = Command::new("node");
    node.args(["-e", JS]);
    let mut openssl = Command::new("openssl");
    openssl.args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]);
    let mut errors = Vec::new();
    for c in [node, openssl] {
        match crate::run_with_timeout(c, Duration::from_secs(60)) {
            Ok(out) if out.stdout.starts_with(b"-----BEGIN PRIVATE KEY-----") => {
                return String::from_utf8(out.stdout).unwrap();
            }
            Ok(out) => errors.push(String::from_utf8_lossy(&out.stdout).into_owned()),
            Err(e) => errors.push(e),
        }
    }
    panic!("cannot generate an RSA key: {}", errors.join("; "))
}

fn rcgen_key(pkcs8_pem: &str, rsa: bool) -> rcgen::KeyPair {
    if rsa {
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(pkcs8_pem, &rcgen::PKCS_RSA_SHA256)
            .expect("RSA key for rcgen")
    } else {
        rcgen::KeyPair::from_pem(pkcs8_pem).expect("EC key for rcgen")
    }
}

/// base64(SHA-256(DER SubjectPublicKeyInfo)), as
/// `openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64` prints it.
fn spki_pin(spki_der: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki_der))
}

fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// 128 random bits, base64url.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    B64.encode(b)
}

// ------------------------------------------------------------------------------------------
// throw-away PKI

/// The server's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerKey {
    /// ECDSA P-256 (default).
    #[default]
    EcP256,
    /// RSA 2048, signed by the (P-256) CA — what Entra ID's endpoints present.
    Rsa2048,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The `authority.spki_sha256` pin of its key: base64 of the SHA-256 of the DER
    /// `SubjectPublicKeyInfo`.
    pub spki_sha256: String,
}

/// A throw-away PKI: a CA, a server certificate for [`SERVER_NAMES`], a certificate from the same
/// CA for a wrong name, and a second, unrelated CA (for "unknown CA" failures) with a server
/// certificate for the right names.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// For [`SERVER_NAMES`], signed by the CA.
    pub server: CertKey,
    /// For `wrong.example` only, signed by the CA.
    pub wrong_name: CertKey,
    /// A CA that signed nothing the authority presents by default.
    pub other_ca_pem: String,
    /// For [`SERVER_NAMES`], signed by the other CA.
    pub other_ca_server: CertKey,
    /// The `spki_sha256` pin of a key the authority does not have.
    pub other_key_spki_sha256: String,
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn issue(&self, names: &[&str], key_pem: &str, rsa: bool) -> CertKey {
        let kp = rcgen_key(key_pem, rsa);
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("server certificate names");
        params.distinguished_name = dn(names[0]);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        if rsa {
            params
                .key_usages
                .push(rcgen::KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params
            .signed_by(&kp, &self.cert, &self.key)
            .expect("server certificate");
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key_pem.to_string(),
            cert_der: cert.der().to_vec(),
            spki_sha256: spki_pin(&kp.public_key_der()),
        }
    }
}

impl Pki {
    /// Generates everything. The three server certificates share one `key`-type key pair.
    pub fn generate(key: ServerKey) -> Pki {
        let ca = Ca::new("imds-tests authority CA");
        let other = Ca::new("imds-tests other CA");
        let key_pem = match key {
            ServerKey::EcP256 => rcgen::KeyPair::generate()
                .expect("server key")
                .serialize_pem(),
            ServerKey::Rsa2048 => rsa_pkcs8_pem(),
        };
        let rsa = key == ServerKey::Rsa2048;
        Pki {
            ca_pem: ca.cert.pem(),
            ca_der: ca.cert.der().to_vec(),
            server: ca.issue(&SERVER_NAMES, &key_pem, rsa),
            wrong_name: ca.issue(&["wrong.example"], &key_pem, rsa),
            other_ca_pem: other.cert.pem(),
            other_ca_server: other.issue(&SERVER_NAMES, &key_pem, rsa),
            other_key_spki_sha256: spki_pin(&other.key.public_key_der()),
        }
    }
}

// ------------------------------------------------------------------------------------------
// the authority

/// Which certificate the authority presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerCert {
    /// For [`SERVER_NAMES`], signed by [`Authority::ca_pem`].
    #[default]
    Valid,
    /// For `wrong.example`, signed by [`Authority::ca_pem`]: name checks must fail.
    WrongName,
    /// For [`SERVER_NAMES`], signed by [`Authority::other_ca_pem`]: chain checks against
    /// [`Authority::ca_pem`] must fail.
    OtherCa,
}

/// A client registered with the authority.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub client_id: String,
    /// `token_endpoint_auth_signing_alg`: the only algorithm accepted for its assertions.
    pub alg: Alg,
    /// Its public key (with `kid`).
    pub public_jwk: Value,
    /// Allowed resource indicators; `None` = any absolute URI.
    pub resources: Option<Vec<String>>,
    /// If set, assertions must carry this `x5t#S256` header (and need no `kid`).
    pub x5t_s256: Option<String>,
}

impl ClientSpec {
    /// A client with `key`'s public JWK and algorithm, any resource, `x5t#S256` required when the
    /// key has a certificate.
    pub fn new(client_id: &str, key: &ClientKey) -> ClientSpec {
        ClientSpec {
            client_id: client_id.to_string(),
            alg: key.alg,
            public_jwk: key.public_jwk.clone(),
            resources: None,
            x5t_s256: key.x5t_s256.clone(),
        }
    }

    /// Restricts the client to these resources.
    pub fn resources(mut self, r: &[&str]) -> ClientSpec {
        self.resources = Some(r.iter().map(|s| s.to_string()).collect());
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "client_id": self.client_id,
            "alg": self.alg.name(),
            "jwks": { "keys": [self.public_jwk] },
            "resources": self.resources,
            "x5t_s256": self.x5t_s256,
        })
    }
}

/// How the authority is started.
#[derive(Debug, Clone)]
pub struct AuthorityOpts {
    /// First path segment of the endpoints. Default: a fresh GUID-shaped string.
    pub tenant: String,
    pub clients: Vec<ClientSpec>,
    pub server_key: ServerKey,
    pub server_cert: ServerCert,
    /// Access-token signature: ES256 (default), RS256 or PS256.
    pub token_alg: Alg,
    /// Access-token lifetime in seconds (default 3600).
    pub access_token_ttl: u64,
}

impl Default for AuthorityOpts {
    fn default() -> Self {
        let r = random_id();
        let hex: String = B64
            .decode(&r)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        AuthorityOpts {
            tenant: format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ),
            clients: Vec::new(),
            server_key: ServerKey::EcP256,
            server_cert: ServerCert::Valid,
            token_alg: Alg::ES256,
            access_token_ttl: 3600,
        }
    }
}

/// A token request style (PROTOCOL.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `resource=R` to `/<tenant>/oauth2/token`.
    V1,
    /// `scope=R/.default` to `/<tenant>/oauth2/v2.0/token`.
    V2,
}

/// A fault the authority applies to token requests (admin API `PUT /fault`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer normally, after this long.
    Delay(Duration),
    /// Issue the token at once, and send the answer this much later (a slow way back: the
    /// token's clock started before the agent received it).
    DelayAnswer(Duration),
    /// This HTTP status (500, 503, …) with a JSON OAuth error body.
    Status(u16),
    /// 429 with `Retry-After: retry_after` (seconds).
    TooMany {
        retry_after: u32,
    },
    /// 200 with `Content-Type: application/json` and truncated JSON.
    Malformed,
    /// 400 `{"error":"invalid_client"}`.
    InvalidClient,
    /// Close the connection without a response.
    Drop,
}

impl Fault {
    fn to_json(&self) -> Value {
        match self {
            Fault::None => json!({"kind": "none"}),
            Fault::Delay(d) => json!({"kind": "delay", "ms": d.as_millis() as u64}),
            Fault::DelayAnswer(d) => {
                json!({"kind": "delay_answer", "ms": d.as_millis() as u64})
            }
            Fault::Status(s) => json!({"kind": "status", "status": s}),
            Fault::TooMany { retry_after } => {
                json!({"kind": "too_many", "retry_after": retry_after})
            }
            Fault::Malformed => json!({"kind": "malformed"}),
            Fault::InvalidClient => json!({"kind": "invalid_client"}),
            Fault::Drop => json!({"kind": "drop"}),
        }
    }
}

/// A running authority (node process), killed on drop.
pub struct Authority {
    child: Child,
    /// Held so that node sees EOF on stdin (and exits) if this process dies without dropping.
    _stdin: ChildStdin,
    pub tenant: String,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// `https://127.0.0.1:PORT/<tenant>/oauth2/token`
    pub token_url_v1: String,
    /// `https://127.0.0.1:PORT/<tenant>/oauth2/v2.0/token`
    pub token_url_v2: String,
    /// `https://127.0.0.1:PORT/<tenant>/oauth2/v2.0/jwks`
    pub jwks_url: String,
    /// The `iss` of its access tokens: `https://127.0.0.1:PORT/<tenant>/v2.0`.
    pub issuer: String,
    /// The CA to trust (PEM), also written to [`Authority::ca_path`].
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// A CA that did not sign the server certificate, also at [`Authority::other_ca_path`].
    pub other_ca_pem: String,
    pub other_ca_path: PathBuf,
    pub pki: Pki,
    /// Where its config, certificates and keys are written.
    pub dir: PathBuf,
    pub startup: Duration,
    log: Arc<Mutex<String>>,
}

impl Authority {
    /// Installs the node packages if needed, writes a fresh PKI and config, starts node and waits
    /// for its listening line.
    pub fn start(opts: AuthorityOpts) -> Authority {
        ensure_node_packages();
        let pki = Pki::generate(opts.server_key);
        let dir = target_dir().join("test-authority").join(format!(
            "{}-{}",
            std::process::id(),
            random_id().replace(['-', '_'], "")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let served = match opts.server_cert {
            ServerCert::Valid => &pki.server,
            ServerCert::WrongName => &pki.wrong_name,
            ServerCert::OtherCa => &pki.other_ca_server,
        };
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cert = write("server.pem", &served.cert_pem);
        let key = write("server.key", &served.key_pem);
        let ca_path = write("ca.pem", &pki.ca_pem);
        let other_ca_path = write("other-ca.pem", &pki.other_ca_pem);
        let config = json!({
            "host": "127.0.0.1",
            "https_port": 0,
            "admin_port": 0,
            "cert": cert,
            "key": key,
            "tenant": opts.tenant,
            "token_alg": opts.token_alg.name(),
            "access_token_ttl": opts.access_token_ttl,
            "exit_on_stdin_close": true,
            "clients": opts.clients.iter().map(ClientSpec::to_json).collect::<Vec<_>>(),
        });
        let config_path = write(
            "config.json",
            &serde_json::to_string_pretty(&config).unwrap(),
        );

        let t0 = Instant::now();
        let mut child = Command::new("node")
            .current_dir(peer_dir())
            .arg(peer_dir().join("server.mjs"))
            .arg(&config_path)
            .env_remove("NODE_OPTIONS")
            .env("NODE_ENV", "test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
        let stdin = child.stdin.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for (pipe, is_stdout) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                true,
            ),
            (Box::new(child.stderr.take().unwrap()), false),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut first = is_stdout.then_some(tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    {
                        let mut l = log.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                    if line.starts_with("authority listening") {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(line);
                        }
                    }
                }
            });
        }
        drop(tx);
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the authority did not start within {START_TIMEOUT:?}; output:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let startup = t0.elapsed();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<SocketAddr>().ok())
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        };
        let https = field("https");
        let admin = field("admin");
        let base = format!("https://{https}/{}", opts.tenant);
        Authority {
            child,
            _stdin: stdin,
            token_url_v1: format!("{base}/oauth2/token"),
            token_url_v2: format!("{base}/oauth2/v2.0/token"),
            jwks_url: format!("{base}/oauth2/v2.0/jwks"),
            issuer: format!("{base}/v2.0"),
            tenant: opts.tenant,
            https,
            admin,
            ca_pem: pki.ca_pem.clone(),
            ca_path,
            other_ca_pem: pki.other_ca_pem.clone(),
            other_ca_path,
            pki,
            dir,
            startup,
            log,
        }
    }

    /// The token endpoint for `style`.
    pub fn token_url(&self, style: Style) -> &str {
        match style {
            Style::V1 => &self.token_url_v1,
            Style::V2 => &self.token_url_v2,
        }
    }

    /// The token endpoint for `style` under another host name or address that reaches the same
    /// port (e.g. `localhost`, or `10.0.2.2` from a QEMU guest with `-netdev user`).
    pub fn token_url_at(&self, style: Style, host: &str) -> String {
        let path = match style {
            Style::V1 => "oauth2/token",
            Style::V2 => "oauth2/v2.0/token",
        };
        format!(
            "https://{host}:{}/{}/{path}",
            self.https.port(),
            self.tenant
        )
    }

    /// The node process's stdout and stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn admin_call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.admin,
            body.len()
        );
        raw(self.admin, req.as_bytes())
    }

    /// Applies `fault` to every token request until changed.
    pub fn set_fault(&self, fault: Fault) {
        self.set_fault_json(fault.to_json());
    }

    /// Applies `fault` to the next `count` token requests, then none.
    pub fn set_fault_times(&self, fault: Fault, count: u32) {
        let mut f = fault.to_json();
        f["count"] = json!(count);
        self.set_fault_json(f);
    }

    /// Sets a fault from its JSON form (see server.mjs `applyFault`), e.g.
    /// `{"kind":"status","status":503,"delay_ms":200,"count":2}`.
    pub fn set_fault_json(&self, f: Value) {
        let r = self.admin_call("PUT", "/fault", Some(&f));
        assert_eq!(r.status, 200, "setting fault {f}: {}", r.text());
    }

    /// Token requests received (oldest first): `{seq, time_ms, path, style, host, content_type,
    /// params, assertion: {header, claims}, fault, status, error}`.
    pub fn requests(&self) -> Vec<Value> {
        let r = self.admin_call("GET", "/requests", None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().cloned().unwrap_or_default()
    }

    pub fn clear_requests(&self) {
        let r = self.admin_call("DELETE", "/requests", None);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Registers one more client while running.
    pub fn register_client(&self, spec: &ClientSpec) -> Result<(), String> {
        let r = self.admin_call("POST", "/clients", Some(&spec.to_json()));
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.text())
        }
    }

    /// GET over TLS 1.3, trusting only [`Authority::ca_pem`].
    pub fn get(&self, url: &str) -> Result<Response, String> {
        https_request(url, &self.ca_pem, "GET", &[], b"", TlsVersions::Tls13Only).map(|(r, _)| r)
    }

    /// The provider's signing keys, fetched from [`Authority::jwks_url`].
    pub fn jwks(&self) -> Value {
        let r = self.get(&self.jwks_url).expect("fetch JWKS");
        assert_eq!(r.status, 200, "JWKS: {}", r.text());
        r.json()
    }

    /// Verifies an access token it issued: signature against its JWKS, `iss`, `aud` = `resource`,
    /// `exp` in the future. Returns the claims.
    pub fn verify_access_token(&self, token: &str, resource: &str) -> Result<Value, String> {
        let claims = verify_jwt(token, &self.jwks())?;
        if claims["iss"] != self.issuer {
            return Err(format!("iss {} is not {}", claims["iss"], self.issuer));
        }
        if claims["aud"] != resource {
            return Err(format!("aud {} is not {resource}", claims["aud"]));
        }
        if claims["exp"].as_u64().unwrap_or(0) <= unix_now() {
            return Err(format!("expired: exp {}", claims["exp"]));
        }
        Ok(claims)
    }

    /// POSTs a client-credentials request for `resource` in `style` to the matching endpoint,
    /// authenticated with a fresh assertion from `key`, over TLS 1.3 trusting only the CA.
    pub fn request_token(
        &self,
        style: Style,
        client_id: &str,
        key: &ClientKey,
        resource: &str,
    ) -> Result<Response, String> {
        let url = self.token_url(style);
        let body = token_form(style, resource, &key.client_assertion(client_id, url));
        post_form(url, &self.ca_pem, &body, TlsVersions::Tls13Only).map(|(r, _)| r)
    }

    /// Sends SIGTERM and waits for the exit (at most 10 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        crate::terminate(&mut self.child, "authority")
    }

    /// The node process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the config, keys and certificates of a failing test for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The form body of a client-credentials token request: `resource=R` (v1) or
/// `scope=R/.default` (v2, `/.default` appended verbatim), with the client assertion.
pub fn token_form(style: Style, resource: &str, assertion: &str) -> String {
    let target = match style {
        Style::V1 => format!("resource={}", pct(resource)),
        Style::V2 => format!("scope={}", pct(&format!("{resource}/.default"))),
    };
    format!(
        "grant_type=client_credentials&{target}&client_assertion_type={}&client_assertion={}",
        pct(JWT_BEARER),
        pct(assertion)
    )
}

// ------------------------------------------------------------------------------------------
// TLS client

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    Tls13Only,
    Tls12Only,
}

/// One HTTPS exchange (`Connection: close`), trusting only `ca_pem`, to a loopback URL.
/// Returns the response and the negotiated TLS version (e.g. "TLSv1_3").
pub fn https_request(
    url: &str,
    ca_pem: &str,
    method: &str,
    headers: &[&str],
    body: &[u8],
    versions: TlsVersions,
) -> Result<(Response, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("not an https URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .map(|(h, p)| (h, p.parse::<u16>().unwrap_or(443)))
        .unwrap_or((authority, 443));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| format!("{host} is not a loopback address (tests stay on loopback)"))?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("CA PEM: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let vers: &[&rustls::SupportedProtocolVersion] = match versions {
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
        TlsVersions::Tls12Only => &[&rustls::version::TLS12],
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(vers)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    let version = format!(
        "{:?}",
        tls.conn
            .protocol_version()
            .ok_or("no protocol version after the handshake")?
    );
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tls.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
    tls.flush().map_err(|e| format!("write: {e}"))?;
    let resp = read_response(&mut tls, method == "HEAD").map_err(|e| format!("read: {e}"))?;
    Ok((resp, version))
}

/// POST an `application/x-www-form-urlencoded` body.
pub fn post_form(
    url: &str,
    ca_pem: &str,
    body: &str,
    versions: TlsVersions,
) -> Result<(Response, String), String> {
    https_request(
        url,
        ca_pem,
        "POST",
        &[
            "Content-Type: application/x-www-form-urlencoded",
            "Accept: application/json",
        ],
        body.as_bytes(),
        versions,
    )
}

// ------------------------------------------------------------------------------------------
// JWT verification

/// Verifies a compact JWS (ES256, RS256 or PS256) against a JWKS document, selecting the key by
/// `kid`. Checks the signature only; returns the claims.
pub fn verify_jwt(token: &str, jwks: &Value) -> Result<Value, String> {
    use p256::ecdsa::signature::Verifier as _;
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err("not a compact JWS".into()),
    };
    let dec = |x: &str| B64.decode(x).map_err(|e| format!("base64url: {e}"));
    let header: Value = serde_json::from_slice(&dec(h)?).map_err(|e| e.to_string())?;
    let kid = header["kid"].as_str().ok_or("no kid in the header")?;
    let key = jwks["keys"]
        .as_array()
        .ok_or("no keys in the JWKS")?
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
    let input = format!("{h}.{p}");
    let sig = dec(s)?;
    let bad = |_| "signature does not verify".to_string();
    match header["alg"].as_str() {
        Some("ES256") => {
            if key["kty"] != "EC" || key["crv"] != "P-256" {
                return Err(format!("ES256 with a {} key", key["kty"]));
            }
            let mut sec1 = vec![4u8];
            sec1.extend(dec(key["x"].as_str().unwrap_or_default())?);
            sec1.extend(dec(key["y"].as_str().unwrap_or_default())?);
            let vk =
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())?;
            let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|e| e.to_string())?;
            vk.verify(input.as_bytes(), &sig).map_err(bad)?;
        }
        Some(alg @ ("RS256" | "PS256")) => {
            if key["kty"] != "RSA" {
                return Err(format!("{alg} with a {} key", key["kty"]));
            }
            let pk = ring::signature::RsaPublicKeyComponents {
                n: dec(key["n"].as_str().unwrap_or_default())?,
                e: dec(key["e"].as_str().unwrap_or_default())?,
            };
            let params = if alg == "RS256" {
                &ring::signature::RSA_PKCS1_2048_8192_SHA256
            } else {
                &ring::signature::RSA_PSS_2048_8192_SHA256
            };
            pk.verify(params, input.as_bytes(), &sig)
                .map_err(|_| "signature does not verify".to_string())?;
        }
        other => return Err(format!("unsupported alg {other:?}")),
    }
    serde_json::from_slice(&dec(p)?).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------------------------
// curl (benchmark baseline)

/// What [`curl_token_request`] measured.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// Wall time of the whole `curl` process (spawn to exit).
    pub elapsed: Duration,
    /// curl's own `%{time_total}` (DNS/connect/TLS/request/response; no process start-up).
    pub time_total: Duration,
    /// curl's `%{time_appconnect}`: until the TLS handshake completed.
    pub time_appconnect: Duration,
    pub status: u16,
    pub body: String,
}

/// Makes one token request with `curl` (TLS 1.3, `--cacert ca_path`, form body as given — with a
/// pre-signed assertion, see [`token_form`]) and times it. Loopback only: proxies are disabled.
pub fn curl_token_request(
    token_url: &str,
    ca_path: &Path,
    form_body: &str,
) -> Result<CurlResult, String> {
    let mut c = Command::new("curl");
    c.args([
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--tlsv1.3",
        "--max-time",
        "30",
        "--cacert",
    ])
    .arg(ca_path)
    .args([
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-binary",
        "@-",
        "--write-out",
        "\n%{http_code} %{time_total} %{time_appconnect}",
        token_url,
    ]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("cannot run curl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(form_body.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let elapsed = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (body, stats) = stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("no write-out in {stdout:?}"))?;
    let mut f = stats.split_whitespace();
    let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let secs = |s: Option<&str>| {
        Duration::from_secs_f64(s.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0))
    };
    let time_total = secs(f.next());
    let time_appconnect = secs(f.next());
    Ok(CurlResult {
        elapsed,
        time_total,
        time_appconnect,
        status,
        body: body.to_string(),
    })
}
