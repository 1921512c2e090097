//! The configuration document: one JSON object, the same for the host daemon and the unikernel.
//!
//! Parsed with serde-json-core into fixed-capacity types. Every problem is reported with the
//! path of the field (`identities[1].client_id`) and what is wrong with it; nothing panics.
//! Secret material (the signing key PEM) is unescaped into a scratch buffer that is zeroized
//! before this module returns.

// Errors carry the field path inline: the core has no heap to box them in.
#![allow(clippy::result_large_err)]

#[cfg(feature = "broker")]
use crate::broker::upstream::Style;
use crate::guard::{Cidr, DEFAULT_IN_FLIGHT, DEFAULT_RATE_PER_S};
#[cfg(feature = "scheduled-events")]
use crate::limits::MAX_SCHEDULED_EVENTS;
#[cfg(feature = "broker")]
use crate::limits::{CA_DER_MAX, FETCH_TOTAL_TIMEOUT_US};
use crate::limits::{
    CONFIG_STRING_MAX, HOST_NAME_MAX, MAX_ALLOW_HOSTS, MAX_ALLOW_RULES, MAX_IDENTITIES,
    MAX_USER_IDENTITIES, PEM_MAX, RESOURCE_ID_MAX, URL_MAX,
};
#[cfg(feature = "attested")]
use crate::metadata::attested::Attestation;
#[cfg(any(feature = "attested", feature = "scheduled-events"))]
use crate::metadata::compute::Compute;
#[cfg(feature = "scheduled-events")]
use crate::metadata::events::EventConfig;
#[cfg(feature = "broker")]
use crate::pem::certificate_der;
use crate::pem::parse_signing_key;
use core::cell::RefCell;
use core::fmt;
use core::net::Ipv4Addr;
#[cfg(any(feature = "std", feature = "broker"))]
use core::net::SocketAddr;
use imds_hal::text::Text;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroize;

/// Default `token_lifetime_s`: Azure's managed-identity tokens live about 24 h.
pub const DEFAULT_TOKEN_LIFETIME_S: u32 = 86_400;
/// Default `refresh_margin_s`: clients refresh their copy when less than 5 minutes remain.
pub const DEFAULT_REFRESH_MARGIN_S: u32 = 300;
/// Default IMDS listener of the host daemon.
#[cfg(feature = "std")]
pub const DEFAULT_IMDS_LISTEN: &str = "169.254.169.254:80";
/// Default legacy (VM extension) listener of the host daemon.
#[cfg(feature = "std")]
pub const DEFAULT_LEGACY_LISTEN: &str = "127.0.0.1:50342";

/// A GUID in its 8-4-4-4-12 text form.
pub type Guid = heapless::String<36>;

/// A random (version 4) GUID from 16 random bytes (for new configs: `imds-agent
/// --init-config`, `cargo xtask config --demo`).
pub fn guid_v4(mut b: [u8; 16]) -> Guid {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut g = Guid::new();
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            g.put("-");
        }
        g.hex2(*x);
    }
    g
}

/// Whose identity it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// System-assigned.
    System,
    /// User-assigned.
    User,
}

/// One identity of the VM.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// System- or user-assigned.
    pub kind: IdentityKind,
    /// The application (client) id.
    pub client_id: Guid,
    /// The object (principal) id.
    pub object_id: Guid,
    /// The ARM resource id.
    pub resource_id: heapless::String<RESOURCE_ID_MAX>,
    /// Broker mode: how the identity proves itself to the authority.
    #[cfg(feature = "broker")]
    pub credential: Option<Credential>,
}

#[cfg(feature = "broker")]
pub use crate::broker::credential::{Alg, ClientKey, Credential, Thumbprints};

/// Broker mode: the OAuth2 authority the agent gets tokens from.
#[cfg(feature = "broker")]
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The token endpoint, as configured (also the `aud` of client assertions).
    pub token_url: heapless::String<URL_MAX>,
    /// Host name from `token_url` (TLS server name and `Host` header).
    pub host: heapless::String<HOST_NAME_MAX>,
    /// TCP port from `token_url` (443 by default).
    pub port: u16,
    /// Path (and query) from `token_url`.
    pub path: heapless::String<URL_MAX>,
    /// The only trust anchor: a CA certificate or a pin of the server's key.
    pub trust: Trust,
    /// `resource=` (v1) or `scope=` (v2) requests.
    pub style: Style,
    /// Fixed address to connect to (no DNS).
    pub address: Option<SocketAddr>,
    /// Budget of one fetch, all attempts included (`timeout_s`).
    pub timeout_us: u64,
}

/// How the authority's TLS certificate is trusted.
#[cfg(feature = "broker")]
// The core has no heap to box the CA in; there is one of these per config.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// `ca_cert`: the server's chain must lead to this CA certificate (DER), and its
    /// certificate must name the host of `token_url`.
    Ca(heapless::Vec<u8, CA_DER_MAX>),
    /// `spki_sha256`: the SHA-256 of the server certificate's DER `SubjectPublicKeyInfo`
    /// (RFC 7469's pin, curl's `--pinnedpubkey sha256//…`). The pinned key is the anchor: the
    /// server must prove it holds it (TLS `CertificateVerify`); chain, name and dates of the
    /// certificate around it are not consulted.
    SpkiSha256([u8; 32]),
}

/// Where the host daemon listens. Read with the `std` feature (the host daemon) only: the
/// image has no listen address, and skips the field unread.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenConfig {
    /// The IMDS listener.
    pub imds: SocketAddr,
    /// `None` when the config sets `"legacy": null`.
    pub legacy: Option<SocketAddr>,
}

/// A managed-identity endpoint of another Azure host kind (App Service / Functions, Azure
/// ML; issue 13): its own listener and the secret every request must carry. Host daemon only.
#[cfg(feature = "std")]
#[derive(Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Where it listens.
    pub listen: SocketAddr,
    /// What clients send in `X-IDENTITY-HEADER` (App Service) or `secret` (Azure ML).
    pub secret: heapless::String<{ crate::limits::HOST_SECRET_MAX }>,
}

#[cfg(feature = "std")]
impl fmt::Debug for HostEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostEndpoint")
            .field("listen", &self.listen)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The other Azure hosts' managed-identity endpoints (`app_service`, `azure_ml`): host daemon
/// only, the image refuses the fields.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsConfig {
    /// `app_service`: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` clients.
    pub app_service: Option<HostEndpoint>,
    /// `azure_ml`: `MSI_ENDPOINT` + `MSI_SECRET` clients.
    pub azure_ml: Option<HostEndpoint>,
    /// `arc`: `IDENTITY_ENDPOINT` + `IMDS_ENDPOINT` clients (Azure Arc's key-file challenge).
    pub arc: Option<ArcConfig>,
}

/// Default `arc.key_dir`: the only directory real Arc clients read key files from on Linux.
#[cfg(feature = "std")]
pub const DEFAULT_ARC_KEY_DIR: &str = "/var/opt/azcmagent/tokens";

/// `arc`: Azure Arc's endpoint (host daemon only).
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArcConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where challenge key files are written (absolute, no trailing `/`).
    pub key_dir: heapless::String<{ crate::limits::ARC_KEY_DIR_MAX }>,
}

/// Static address of the unikernel (DHCP when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The interface address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// The P-256 signing key of issuer mode. `Debug` never shows it; dropped keys are zeroized
/// (p256's `SigningKey` zeroizes on drop).
#[derive(Clone)]
pub struct SigningKey(pub p256::ecdsa::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tenant (`tid` claim, `/metadata/identity/info`).
    pub tenant_id: Guid,
    /// The `iss` of minted tokens.
    pub issuer: heapless::String<URL_MAX>,
    /// Lifetime of a minted token.
    pub token_lifetime_s: u32,
    /// A cached token is renewed when less than this is left.
    pub refresh_margin_s: u32,
    /// Issuer mode's key; optional in broker mode (then no JWKS is published).
    pub signing_key: Option<SigningKey>,
    /// Broker mode when present.
    #[cfg(feature = "broker")]
    pub authority: Option<AuthorityConfig>,
    /// Where the host daemon listens (read with `std` only).
    #[cfg(feature = "std")]
    pub listen: ListenConfig,
    /// The other Azure hosts' endpoints (read with `std` only; the image refuses them).
    #[cfg(feature = "std")]
    pub hosts: HostsConfig,
    /// The unikernel's static address (DHCP when absent).
    pub network: Option<NetworkConfig>,
    /// The identities of the VM.
    pub identities: heapless::Vec<IdentityConfig, MAX_IDENTITIES>,
    /// Sources allowed to get tokens (`None`: loopback, link-local and the agent's subnets).
    pub allow: Option<heapless::Vec<Cidr, MAX_ALLOW_RULES>>,
    /// Host names accepted in the `Host` header besides IP literals and `localhost`.
    pub allow_hosts: heapless::Vec<heapless::String<HOST_NAME_MAX>, MAX_ALLOW_HOSTS>,
    /// Per-source limits.
    pub limits: LimitsConfig,
    /// The signer of the attested document (`None`: that endpoint answers 404).
    #[cfg(feature = "attested")]
    pub attestation: Option<Attestation>,
    /// `scheduled_events`.
    #[cfg(feature = "scheduled-events")]
    pub scheduled_events: heapless::Vec<EventConfig, MAX_SCHEDULED_EVENTS>,
    /// The `instance.compute` values the attested document and scheduled events carry.
    #[cfg(any(feature = "attested", feature = "scheduled-events"))]
    pub compute: Compute,
    /// `instance` and `loadbalancer` (issue 12), as compact JSON; empty when absent.
    pub metadata: crate::metadata::Documents,
}

/// Per-source limits on requests that need a mint or a fetch (0 disables one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Costly requests per second and source.
    pub rate_per_s: u32,
    /// Requests of one source waiting for a fetch at once.
    pub in_flight: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rate_per_s: DEFAULT_RATE_PER_S,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

/// Where in the document a problem is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath {
    /// The top-level field.
    pub field: heapless::String<40>,
    /// The list index, if the field is a list.
    pub index: Option<usize>,
    /// The field inside it, if any (`instance`: the path inside the document).
    pub sub: Option<heapless::String<{ crate::limits::METADATA_FIELD_PATH_MAX }>>,
}

impl FieldPath {
    pub(crate) fn top(name: &str) -> Self {
        FieldPath {
            field: truncated(name),
            ..Default::default()
        }
    }
    pub(crate) fn nested(name: &str, index: Option<usize>, sub: &str) -> Self {
        FieldPath {
            field: truncated(name),
            index,
            sub: Some(truncated(sub)),
        }
    }
}

fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    truncate_into(s, out.as_mut_view());
    out
}

/// The longest prefix of `s` (whole characters) that fits `out`: one copy for every capacity.
fn truncate_into(s: &str, out: &mut heapless::string::StringView) {
    let mut end = s.len().min(out.capacity());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let _ = out.push_str(&s[..end]);
}

impl FieldPath {
    /// The path (`identities[1].client_id`), written without `core::fmt` (the image's console).
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        out.put(&self.field);
        if let Some(i) = self.index {
            out.put("[").dec(i as u64).put("]");
        }
        if let Some(sub) = &self.sub {
            out.put(".").put(sub);
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f);
        Ok(())
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The document is not valid JSON (or a value has the wrong JSON type); `at` is the field
    /// being read when it went wrong, if any.
    Syntax {
        /// The field being read.
        at: Option<FieldPath>,
        /// What went wrong.
        detail: &'static str,
    },
    /// A required field is absent.
    Missing(FieldPath),
    /// A field is present but its value is wrong.
    Invalid {
        /// The field.
        field: FieldPath,
        /// What is wrong with its value.
        why: &'static str,
    },
    /// A field the agent does not know (a typo?).
    Unknown(FieldPath),
}

impl ConfigError {
    /// The message (`config: field `identities[1].client_id`: must be a GUID ...`), written
    /// without `core::fmt` (the image's console); `Display` writes the same.
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        out.put("config: ");
        match self {
            ConfigError::Syntax {
                at: Some(p),
                detail,
            } => {
                out.put("field `");
                p.describe(out);
                out.put("`: ").put(detail);
            }
            ConfigError::Syntax { at: None, detail } => {
                out.put(detail);
            }
            ConfigError::Missing(p) => {
                out.put("field `");
                p.describe(out);
                out.put("` is required");
            }
            ConfigError::Invalid { field, why } => {
                out.put("field `");
                field.describe(out);
                out.put("`: ").put(why);
            }
            ConfigError::Unknown(p) => {
                out.put("unknown field `");
                p.describe(out);
                out.put("`");
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl core::error::Error for ConfigError {}

fn json_detail(e: &serde_json_core::de::Error) -> &'static str {
    use serde_json_core::de::Error as E;
    match e {
        E::InvalidType => "has the wrong type",
        E::InvalidNumber => "is not a valid number",
        E::InvalidUnicodeCodePoint => "has an invalid \\u escape",
        E::EscapedStringIsTooLong => "string too long",
        E::EofWhileParsingString
        | E::EofWhileParsingValue
        | E::EofWhileParsingObject
        | E::EofWhileParsingList
        | E::EofWhileParsingNumber => "unexpected end of the document",
        E::ExpectedColon => "expected `:`",
        E::ExpectedListCommaOrEnd => "expected `,` or `]`",
        E::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
        E::ExpectedSomeIdent => "expected `true`, `false` or `null`",
        E::ExpectedSomeValue => "expected a value",
        E::KeyMustBeAString => "object keys must be strings",
        E::TrailingCharacters => "trailing characters after the document",
        E::TrailingComma => "trailing comma",
        E::CustomError => "invalid value",
        _ => "is not valid JSON here",
    }
}

// ---------------------------------------------------------------------------------------------
// Raw document: what serde reads, before validation.

type Str<const N: usize> = heapless::String<N>;

#[derive(Default)]
struct RawIdentity {
    kind: Option<Str<16>>,
    client_id: Option<Str<64>>,
    object_id: Option<Str<64>>,
    resource_id: Option<Str<RESOURCE_ID_MAX>>,
    // Key material is decoded as soon as it is read, so that no PEM stays around.
    #[cfg(feature = "broker")]
    key: Option<Result<ClientKey, &'static str>>,
    #[cfg(feature = "broker")]
    alg: Option<Str<16>>,
    #[cfg(feature = "broker")]
    certificate: Option<Result<Thumbprints, &'static str>>,
    /// A broker-only field (`key`, `alg`, `certificate`) in a build without broker mode.
    #[cfg(not(feature = "broker"))]
    broker_field: Option<&'static str>,
}

#[derive(Default)]
struct RawLimits {
    rate_per_s: Option<u32>,
    in_flight: Option<u32>,
}

#[cfg(feature = "broker")]
#[derive(Default)]
struct RawAuthority {
    token_url: Option<Str<URL_MAX>>,
    ca_cert: Option<Result<heapless::Vec<u8, CA_DER_MAX>, &'static str>>,
    spki_sha256: Option<Str<96>>,
    style: Option<Str<8>>,
    address: Option<Str<64>>,
    timeout_s: Option<u32>,
}

#[cfg(feature = "std")]
#[derive(Default)]
struct RawListen {
    imds: Option<Str<64>>,
    legacy: Option<Option<Str<64>>>,
}

#[derive(Default)]
struct RawNetwork {
    address: Option<Str<32>>,
    gateway: Option<Str<32>>,
}

#[derive(Default)]
struct Raw {
    tenant_id: Option<Str<64>>,
    issuer: Option<Str<URL_MAX>>,
    token_lifetime_s: Option<u32>,
    refresh_margin_s: Option<u32>,
    signing_key: Option<Str<PEM_MAX>>,
    #[cfg(feature = "std")]
    listen: Option<RawListen>,
    #[cfg(feature = "std")]
    app_service: Option<RawHostEndpoint>,
    #[cfg(feature = "std")]
    azure_ml: Option<RawHostEndpoint>,
    #[cfg(feature = "std")]
    arc: Option<RawArc>,
    /// A host-daemon-only field (`app_service`, `azure_ml`) in the image: refused by `validate`.
    #[cfg(not(feature = "std"))]
    host_only: Option<&'static str>,
    network: Option<RawNetwork>,
    #[cfg(feature = "broker")]
    authority: Option<RawAuthority>,
    /// An `authority` (not `null`) in a build without broker mode.
    #[cfg(not(feature = "broker"))]
    authority: bool,
    allow: Option<heapless::Vec<Str<48>, MAX_ALLOW_RULES>>,
    allow_hosts: Option<heapless::Vec<Str<HOST_NAME_MAX>, MAX_ALLOW_HOSTS>>,
    limits: Option<RawLimits>,
    identities: Option<heapless::Vec<RawIdentity, MAX_IDENTITIES>>,
    identities_overflow: bool,
    #[cfg(feature = "attested")]
    attestation: Option<RawAttestation>,
    #[cfg(feature = "scheduled-events")]
    scheduled_events: Option<RawEvents>,
    /// A field this build cannot serve (its feature is off): refused by `validate`.
    #[cfg(not(all(feature = "attested", feature = "scheduled-events")))]
    needs_feature: Option<(&'static str, &'static str)>,
    metadata: crate::metadata::Documents,
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(k) = self.signing_key.as_mut() {
            // SAFETY-free zeroization through the zeroize crate (heapless::String is not
            // Zeroize itself: clear its bytes through a mutable byte view).
            zeroize_string(k);
        }
    }
}

pub(crate) fn zeroize_string<const N: usize>(s: &mut heapless::String<N>) {
    let mut bytes = core::mem::take(s).into_bytes();
    bytes.as_mut_slice().zeroize();
    bytes.clear();
}

/// Records which field was being read when an error surfaced.
pub(crate) struct Tracker {
    at: RefCell<Option<FieldPath>>,
    unknown: RefCell<Option<FieldPath>>,
    /// What is wrong inside `instance` / `loadbalancer` (the serde error only stops the parse).
    problem: RefCell<Option<ConfigError>>,
}

impl Tracker {
    pub(crate) fn set(&self, p: FieldPath) {
        *self.at.borrow_mut() = Some(p);
    }
}

/// The next value as a string of at most `N` bytes. Every string of the document is read
/// through one instantiation of serde-json-core's string code (one per `heapless::String<N>`
/// would each be in the image), then copied to its size; too long is serde's `invalid_length`,
/// as from `heapless::String<N>` itself.
#[cfg(any(feature = "broker", feature = "attested"))]
pub(crate) fn next_str<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
) -> Result<Str<N>, A::Error> {
    let mut s = next_any_str(map)?;
    let r = fit(&s);
    zeroize_string(&mut s);
    r
}

/// [`next_str`] into `out` (`Some`): the string code is the same for every capacity (a view of
/// `out`), and no `Result<Str<N>, _>` is moved at the call site.
pub(crate) fn next_str_into<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
    out: &mut Option<Str<N>>,
) -> Result<(), A::Error> {
    read_str_into(map, out.insert(Str::new()).as_mut_view())
}

#[inline(never)]
fn read_str_into<'de, A: MapAccess<'de>>(
    map: &mut A,
    out: &mut heapless::string::StringView,
) -> Result<(), A::Error> {
    // Straight into `out` (a secret, the signing key, is wiped with it by `Raw`'s drop): no
    // intermediate copy.
    map.next_value_seed(StrSeed(out))
}

/// [`next_str`] for a value that may be `null`.
fn next_opt_str<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
) -> Result<Option<Str<N>>, A::Error> {
    // Read in place (these are addresses, not secrets: no scratch copy to wipe).
    let mut s = Str::new();
    let some = map.next_value_seed(OptStr(s.as_mut_view()))?;
    Ok(some.then_some(s))
}

/// The next value as a list of at most `M` strings of at most `N` bytes (what
/// `heapless::Vec<Str<N>, M>` reads, through the shared string code). One visitor for every
/// list (`allow`, `allow_hosts`): each element is handed to `push`, which says whether it fit.
fn next_str_list<'de, A: MapAccess<'de>, const N: usize, const M: usize>(
    map: &mut A,
) -> Result<heapless::Vec<Str<N>, M>, A::Error> {
    let mut list = heapless::Vec::new();
    let mut push = |s: &str| match Str::<N>::try_from(s) {
        Ok(item) => list.push(item).map_err(|_| M + 1),
        Err(_) => Err(s.len()),
    };
    map.next_value_seed(ListSeed(&mut push))?;
    Ok(list)
}

/// Reads a list of strings into a `push` callback; `Err(n)` from it is `invalid_length(n)`.
struct ListSeed<'p>(&'p mut dyn FnMut(&str) -> Result<(), usize>);

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings")
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        let mut s = Str::<PEM_MAX>::new();
        while seq.next_element_seed(StrSeed(s.as_mut_view()))?.is_some() {
            (self.0)(&s).map_err(|n| de::Error::invalid_length(n, &"a shorter string or list"))?;
            s.clear();
        }
        Ok(())
    }
}

#[cfg(any(feature = "broker", feature = "attested"))]
#[inline(never)]
fn next_any_str<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Str<PEM_MAX>, A::Error> {
    let mut s = Str::new();
    map.next_value_seed(StrSeed(s.as_mut_view()))?;
    Ok(s)
}

/// Reads a string into a view of a `heapless::String` of any capacity (what its own
/// `Deserialize` does, too long being `invalid_length`): keys and values share this code.
struct StrSeed<'b>(&'b mut heapless::string::StringView);

impl<'de> DeserializeSeed<'de> for StrSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0
            .push_str(v)
            .map_err(|_| E::invalid_length(v.len(), &"a shorter string"))
    }
}

/// A string or `null` (`false`) into a view, through [`StrSeed`].
struct OptStr<'b>(&'b mut heapless::string::StringView);

impl<'de> DeserializeSeed<'de> for OptStr<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptStr<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(StrSeed(self.0)).map(|()| true)
    }
}

#[cfg(any(feature = "broker", feature = "attested"))]
fn fit<E: de::Error, const N: usize>(s: &str) -> Result<Str<N>, E> {
    Str::try_from(s).map_err(|_| E::invalid_length(s.len(), &"a shorter string"))
}

// The visitors and validators below are `#[inline(never)]`: inlined into one function they
// make one large frame (the raw document is tens of KiB) whose accesses need 32-bit
// displacements (3.5 KB more code in the image).

/// Read a map, calling `field` for each key.
pub(crate) fn read_map<'de, A, F>(mut map: A, mut field: F) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<(), A::Error>,
{
    let mut key = Str::<64>::new();
    while map.next_key_seed(StrSeed(key.as_mut_view()))?.is_some() {
        field(key.as_str(), &mut map)?;
        key.clear();
    }
    Ok(())
}

/// Reads the top level into a `Raw` in place (it is tens of KiB: not moved through results).
struct RawSeed<'t, 'r>(&'t Tracker, &'r mut Raw);

impl<'de> DeserializeSeed<'de> for RawSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RawSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let RawSeed(t, raw) = self;
        read_map(map, |key, map| {
            t.set(FieldPath::top(key));
            match key {
                "tenant_id" => next_str_into(map, &mut raw.tenant_id)?,
                "issuer" => next_str_into(map, &mut raw.issuer)?,
                "token_lifetime_s" => raw.token_lifetime_s = Some(map.next_value()?),
                "refresh_margin_s" => raw.refresh_margin_s = Some(map.next_value()?),
                "signing_key" => next_str_into(map, &mut raw.signing_key)?,
                #[cfg(feature = "std")]
                "listen" => raw.listen = Some(map.next_value_seed(ListenSeed(t))?),
                // The image has no listen address: the field is allowed and skipped.
                #[cfg(not(feature = "std"))]
                "listen" => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                #[cfg(feature = "std")]
                "app_service" => {
                    raw.app_service =
                        map.next_value_seed(Opt(HostEndpointSeed(t, "app_service")))?
                }
                #[cfg(feature = "std")]
                "azure_ml" => {
                    raw.azure_ml = map.next_value_seed(Opt(HostEndpointSeed(t, "azure_ml")))?
                }
                #[cfg(feature = "std")]
                "arc" => raw.arc = map.next_value_seed(Opt(ArcSeed(t)))?,
                #[cfg(not(feature = "std"))]
                "app_service" | "azure_ml" | "arc" => {
                    if map.next_value::<Option<de::IgnoredAny>>()?.is_some() {
                        raw.host_only = Some(match key {
                            "app_service" => "app_service",
                            "azure_ml" => "azure_ml",
                            _ => "arc",
                        });
                    }
                }
                "network" => raw.network = map.next_value_seed(Opt(NetworkSeed(t)))?,
                #[cfg(feature = "broker")]
                "authority" => raw.authority = map.next_value_seed(Opt(AuthoritySeed(t)))?,
                #[cfg(not(feature = "broker"))]
                "authority" => {
                    raw.authority = map.next_value::<Option<de::IgnoredAny>>()?.is_some()
                }
                "allow" => raw.allow = Some(next_str_list(map)?),
                "allow_hosts" => raw.allow_hosts = Some(next_str_list(map)?),
                "limits" => raw.limits = Some(map.next_value_seed(LimitsSeed(t))?),
                #[cfg(feature = "attested")]
                "attestation" => {
                    raw.attestation = map.next_value_seed(Opt(AttestationSeed(t)))?;
                }
                #[cfg(not(feature = "attested"))]
                "attestation" => {
                    if map.next_value::<Option<de::IgnoredAny>>()?.is_some() {
                        raw.needs_feature = Some(("attestation", NEEDS_ATTESTED));
                    }
                }
                #[cfg(feature = "scheduled-events")]
                "scheduled_events" => {
                    raw.scheduled_events = Some(map.next_value_seed(EventsSeed(t))?)
                }
                #[cfg(not(feature = "scheduled-events"))]
                "scheduled_events" => {
                    if map.next_value::<Option<de::IgnoredAny>>()?.is_some() {
                        raw.needs_feature = Some(("scheduled_events", NEEDS_SCHEDULED_EVENTS));
                    }
                }
                "instance" => {
                    metadata_field(t, "instance", map, raw.metadata.instance.parts_mut())?
                }
                "loadbalancer" => metadata_field(
                    t,
                    "loadbalancer",
                    map,
                    raw.metadata.loadbalancer.parts_mut(),
                )?,
                "identities" => {
                    // A repeated key: the last list counts, as a whole.
                    raw.identities_overflow = false;
                    let list = raw.identities.insert(heapless::Vec::new());
                    map.next_value_seed(IdentitiesSeed(t, list, &mut raw.identities_overflow))?;
                }
                // Documentation fields are allowed anywhere a human might want them.
                k if k.starts_with('_') || k.starts_with('#') => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                other => unknown_field(t, FieldPath::top(other), map)?,
            }
            Ok(())
        })?;
        t.at.borrow_mut().take();
        Ok(())
    }
}

#[cfg(feature = "std")]
struct ListenSeed<'t>(&'t Tracker);

#[cfg(feature = "std")]
impl<'de> DeserializeSeed<'de> for ListenSeed<'_> {
    type Value = RawListen;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawListen, D::Error> {
        d.deserialize_map(self)
    }
}

#[cfg(feature = "std")]
impl<'de> Visitor<'de> for ListenSeed<'_> {
    type Value = RawListen;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `imds` and `legacy`")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawListen, A::Error> {
        let t = self.0;
        let mut raw = RawListen::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("listen", None, key));
            match key {
                "imds" => next_str_into(map, &mut raw.imds)?,
                "legacy" => raw.legacy = Some(next_opt_str(map)?),
                other => unknown_field(t, FieldPath::nested("listen", None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

/// `null` (or absent) or an object read by the map visitor `V`.
pub(crate) struct Opt<V>(pub(crate) V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Opt<V> {
    type Value = Option<V::Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Opt<V> {
    type Value = Option<V::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or ")?;
        self.0.expecting(f)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self.0).map(Some)
    }
}

/// `instance` or `loadbalancer`: transcoded into its compact copy (module `metadata`).
#[inline(never)]
fn metadata_field<'de, A: MapAccess<'de>>(
    t: &Tracker,
    name: &str,
    map: &mut A,
    out: (&mut [u8], &mut usize),
) -> Result<(), A::Error> {
    match crate::metadata::transcode(map, out, name == "loadbalancer")? {
        Ok(()) => Ok(()),
        Err(p) => {
            let sub = (!p.path.is_empty()).then_some(p.path);
            *t.problem.borrow_mut() = Some(ConfigError::Invalid {
                field: FieldPath {
                    field: truncated(name),
                    index: None,
                    sub,
                },
                why: p.why,
            });
            Err(de::Error::custom(""))
        }
    }
}

/// A field no one knows: remember the first for the error (a typo is an error, not a silent
/// default) and skip its value.
pub(crate) fn unknown_field<'de, A: MapAccess<'de>>(
    t: &Tracker,
    path: FieldPath,
    map: &mut A,
) -> Result<(), A::Error> {
    t.unknown.borrow_mut().get_or_insert(path);
    map.next_value::<de::IgnoredAny>()?;
    Ok(())
}

struct LimitsSeed<'t>(&'t Tracker);

impl<'de> DeserializeSeed<'de> for LimitsSeed<'_> {
    type Value = RawLimits;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawLimits, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LimitsSeed<'_> {
    type Value = RawLimits;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `rate_per_s` and `in_flight`")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = self.0;
        let mut raw = RawLimits::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("limits", None, key));
            match key {
                "rate_per_s" => raw.rate_per_s = map.next_value()?,
                "in_flight" => raw.in_flight = map.next_value()?,
                other => unknown_field(t, FieldPath::nested("limits", None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

struct NetworkSeed<'t>(&'t Tracker);

impl<'de> Visitor<'de> for NetworkSeed<'_> {
    type Value = RawNetwork;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `address` and `gateway`")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = self.0;
        let mut raw = RawNetwork::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("network", None, key));
            match key {
                "address" => next_str_into(map, &mut raw.address)?,
                "gateway" => raw.gateway = next_opt_str(map)?,
                other => unknown_field(t, FieldPath::nested("network", None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

#[cfg(feature = "std")]
#[derive(Default)]
struct RawHostEndpoint {
    listen: Option<Str<64>>,
    secret: Option<Str<{ crate::limits::HOST_SECRET_MAX }>>,
}

/// `app_service` / `azure_ml`: `{"listen": "ADDR:PORT", "secret": S}`.
#[cfg(feature = "std")]
struct HostEndpointSeed<'t>(&'t Tracker, &'static str);

#[cfg(feature = "std")]
impl<'de> Visitor<'de> for HostEndpointSeed<'_> {
    type Value = RawHostEndpoint;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `listen` and `secret`")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let (t, name) = (self.0, self.1);
        let mut raw = RawHostEndpoint::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested(name, None, key));
            match key {
                "listen" => raw.listen = Some(next_str(map)?),
                "secret" => raw.secret = Some(next_str(map)?),
                other => unknown_field(t, FieldPath::nested(name, None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

/// Validate `app_service` / `azure_ml`: an address and a secret that can travel in a header.
#[cfg(feature = "std")]
fn validate_host_endpoint(
    raw: Option<&RawHostEndpoint>,
    name: &str,
) -> Result<Option<HostEndpoint>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let p = |sub| FieldPath::nested(name, None, sub);
    let listen = raw
        .listen
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(p("listen")))?;
    let listen = socket_addr(listen, p("listen"))?;
    let secret = raw
        .secret
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(p("secret")))?;
    if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Invalid {
            field: p("secret"),
            why: "must be 1 to 256 printable ASCII characters without spaces (it travels in \
                  an HTTP header)",
        });
    }
    Ok(Some(HostEndpoint {
        listen,
        secret: secret.clone(),
    }))
}

#[cfg(feature = "std")]
#[derive(Default)]
struct RawArc {
    listen: Option<Str<64>>,
    key_dir: Option<Str<{ crate::limits::ARC_KEY_DIR_MAX }>>,
}

/// `arc`: `{"listen": "ADDR:PORT", "key_dir": "/var/opt/azcmagent/tokens"}`.
#[cfg(feature = "std")]
struct ArcSeed<'t>(&'t Tracker);

#[cfg(feature = "std")]
impl<'de> Visitor<'de> for ArcSeed<'_> {
    type Value = RawArc;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `listen` and `key_dir`")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = self.0;
        let mut raw = RawArc::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("arc", None, key));
            match key {
                "listen" => raw.listen = Some(next_str(map)?),
                "key_dir" => raw.key_dir = Some(next_str(map)?),
                other => unknown_field(t, FieldPath::nested("arc", None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

/// Validate `arc`: an address, and an absolute key directory without whitespace (it goes
/// into a header, unquoted).
#[cfg(feature = "std")]
fn validate_arc(raw: Option<&RawArc>) -> Result<Option<ArcConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let p = |sub| FieldPath::nested("arc", None, sub);
    let listen = raw
        .listen
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(p("listen")))?;
    let listen = socket_addr(listen, p("listen"))?;
    let dir = raw.key_dir.as_deref().unwrap_or(DEFAULT_ARC_KEY_DIR);
    let dir = dir.trim_end_matches('/');
    let bad = || ConfigError::Invalid {
        field: p("key_dir"),
        why: "must be an absolute directory path (not `/`) of printable ASCII without spaces",
    };
    if !dir.starts_with('/') || !dir.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let mut key_dir = heapless::String::new();
    key_dir.push_str(dir).map_err(|_| bad())?;
    Ok(Some(ArcConfig { listen, key_dir }))
}

/// Why the image refuses `app_service`, `azure_ml` and `arc`.
#[cfg(not(feature = "std"))]
const HOST_DAEMON_ONLY: &str = "is served by the host daemon only";

#[cfg(feature = "broker")]
struct AuthoritySeed<'t>(&'t Tracker);

#[cfg(feature = "broker")]
impl<'de> Visitor<'de> for AuthoritySeed<'_> {
    type Value = RawAuthority;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an authority object")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let t = self.0;
        let mut raw = RawAuthority::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("authority", None, key));
            match key {
                "token_url" => next_str_into(map, &mut raw.token_url)?,
                "ca_cert" => {
                    let pem: Str<PEM_MAX> = next_str(map)?;
                    raw.ca_cert = Some(certificate_der(&pem));
                }
                "spki_sha256" => next_str_into(map, &mut raw.spki_sha256)?,
                "style" => next_str_into(map, &mut raw.style)?,
                "address" => raw.address = next_opt_str(map)?,
                "timeout_s" => raw.timeout_s = Some(map.next_value()?),
                k if k.starts_with('_') => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                other => unknown_field(t, FieldPath::nested("authority", None, other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

/// Reads `identities` into the raw document's list in place (33 raw identities are KiBs: not
/// moved through results), noting whether there were more than fit.
struct IdentitiesSeed<'t, 'r>(
    &'t Tracker,
    &'r mut heapless::Vec<RawIdentity, MAX_IDENTITIES>,
    &'r mut bool,
);

impl<'de> DeserializeSeed<'de> for IdentitiesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for IdentitiesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of identities")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let IdentitiesSeed(t, list, overflow) = self;
        let mut index = 0;
        while let Some(item) = seq.next_element_seed(IdentitySeed(t, index))? {
            if list.push(item).is_err() {
                *overflow = true;
            }
            index += 1;
        }
        Ok(())
    }
}

struct IdentitySeed<'t>(&'t Tracker, usize);

impl<'de> DeserializeSeed<'de> for IdentitySeed<'_> {
    type Value = RawIdentity;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawIdentity, D::Error> {
        self.0.set(FieldPath {
            field: truncated("identities"),
            index: Some(self.1),
            sub: None,
        });
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IdentitySeed<'_> {
    type Value = RawIdentity;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an identity object")
    }
    #[inline(never)]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawIdentity, A::Error> {
        let (t, i) = (self.0, self.1);
        let mut raw = RawIdentity::default();
        read_map(map, |key, map| {
            t.set(FieldPath::nested("identities", Some(i), key));
            match key {
                "kind" => next_str_into(map, &mut raw.kind)?,
                "client_id" => next_str_into(map, &mut raw.client_id)?,
                "object_id" => next_str_into(map, &mut raw.object_id)?,
                "resource_id" => next_str_into(map, &mut raw.resource_id)?,
                #[cfg(feature = "broker")]
                "key" => {
                    let mut pem: Str<PEM_MAX> = next_str(map)?;
                    raw.key = Some(ClientKey::from_pem(&pem));
                    zeroize_string(&mut pem);
                }
                #[cfg(feature = "broker")]
                "alg" => next_str_into(map, &mut raw.alg)?,
                #[cfg(feature = "broker")]
                "certificate" => {
                    let pem: Str<PEM_MAX> = next_str(map)?;
                    raw.certificate = Some(crate::broker::credential::thumbprints(&pem));
                }
                #[cfg(not(feature = "broker"))]
                k @ ("key" | "alg" | "certificate") => {
                    // Not read (a key is not even copied): refused in `validate_identities`.
                    map.next_value::<de::IgnoredAny>()?;
                    raw.broker_field.get_or_insert(match k {
                        "key" => "key",
                        "alg" => "alg",
                        _ => "certificate",
                    });
                }
                k if k.starts_with('_') => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                other => unknown_field(t, FieldPath::nested("identities", Some(i), other), map)?,
            }
            Ok(())
        })?;
        Ok(raw)
    }
}

// ---------------------------------------------------------------------------------------------
// The metadata sections: `attestation` and `scheduled_events`.

#[cfg(feature = "attested")]
use attestation::{validate_attestation, AttestationSeed, RawAttestation};

/// `attestation` (feature `attested`).
#[cfg(feature = "attested")]
mod attestation {
    use super::*;
    use crate::limits::ATTEST_CERT_DER_MAX;
    use crate::metadata::attested::{AttestKey, Attestation};

    // ---- config: `attestation` ---------------------------------------------------------------------

    /// `attestation` as read: the key decoded at once (no PEM stays around).
    #[derive(Default)]
    pub(super) struct RawAttestation {
        key: Option<Result<AttestKey, &'static str>>,
        certificate: Option<Result<heapless::Vec<u8, ATTEST_CERT_DER_MAX>, &'static str>>,
    }

    /// Reads the `attestation` object.
    pub(super) struct AttestationSeed<'t>(pub(super) &'t Tracker);

    impl<'de> Visitor<'de> for AttestationSeed<'_> {
        type Value = RawAttestation;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object with `key` and `certificate`")
        }
        #[inline(never)]
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAttestation, A::Error> {
            let t = self.0;
            let mut raw = RawAttestation::default();
            read_map(map, |key, map| {
                t.set(FieldPath::nested("attestation", None, key));
                match key {
                    "key" => {
                        let mut pem: heapless::String<PEM_MAX> = next_str(map)?;
                        raw.key = Some(parse_attest_key(&pem));
                        zeroize_string(&mut pem);
                    }
                    "certificate" => {
                        let pem: heapless::String<PEM_MAX> = next_str(map)?;
                        raw.certificate = Some(crate::metadata::attested::certificate_der(&pem));
                    }
                    k if k.starts_with('_') => {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                    other => unknown_field(t, FieldPath::nested("attestation", None, other), map)?,
                }
                Ok(())
            })?;
            Ok(raw)
        }
    }

    /// The attestation key: PKCS#8 P-256, or with the `rsa` feature an RSA key.
    fn parse_attest_key(pem: &str) -> Result<AttestKey, &'static str> {
        match crate::pem::parse_signing_key(pem) {
            Ok(k) => Ok(AttestKey::P256(k)),
            #[cfg(feature = "rsa")]
            Err(_) => match crate::broker::credential::ClientKey::from_pem(pem) {
                Ok(crate::broker::credential::ClientKey::Rsa(k)) => Ok(AttestKey::Rsa(k)),
                Ok(crate::broker::credential::ClientKey::Es256(k)) => Ok(AttestKey::P256(k)),
                Err(e) => Err(e),
            },
            #[cfg(not(feature = "rsa"))]
            Err(e) => Err(e),
        }
    }

    /// Validate `attestation`: both fields, and the certificate holds the key's public key.
    #[inline(never)]
    pub(super) fn validate_attestation(raw: &RawAttestation) -> Result<Attestation, ConfigError> {
        let p = |sub| FieldPath::nested("attestation", None, sub);
        let key = match &raw.key {
            None => return Err(ConfigError::Missing(p("key"))),
            Some(Err(why)) => {
                return Err(ConfigError::Invalid {
                    field: p("key"),
                    why,
                })
            }
            Some(Ok(k)) => k.clone(),
        };
        let certificate = match &raw.certificate {
            None => return Err(ConfigError::Missing(p("certificate"))),
            Some(Err(why)) => {
                return Err(ConfigError::Invalid {
                    field: p("certificate"),
                    why,
                })
            }
            Some(Ok(c)) => c.clone(),
        };
        Attestation::new(key, certificate)
            .map_err(|(sub, why)| ConfigError::Invalid { field: p(sub), why })
    }
}

#[cfg(feature = "scheduled-events")]
use scheduled::{validate_events, EventsSeed, RawEvents};

/// `scheduled_events` (feature `scheduled-events`).
#[cfg(feature = "scheduled-events")]
mod scheduled {
    use super::*;
    use crate::limits::MAX_SCHEDULED_EVENTS;
    use crate::metadata::events::{EventConfig, EventType};

    // ---- config: `scheduled_events` -----------------------------------------------------------------

    #[derive(Default)]
    pub(super) struct RawEvent {
        kind: Option<heapless::String<16>>,
        appear_after_s: Option<u32>,
        notice_s: Option<u32>,
        duration_s: Option<i64>,
        description: Option<heapless::String<{ crate::limits::EVENT_DESCRIPTION_MAX }>>,
        source: Option<heapless::String<16>>,
    }

    /// `scheduled_events` as read, and whether it had more than [`MAX_SCHEDULED_EVENTS`].
    pub(super) type RawEvents = (heapless::Vec<RawEvent, MAX_SCHEDULED_EVENTS>, bool);

    /// Reads the `scheduled_events` list.
    pub(super) struct EventsSeed<'t>(pub(super) &'t Tracker);

    impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
        type Value = RawEvents;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawEvents, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for EventsSeed<'_> {
        type Value = RawEvents;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEvents, A::Error> {
            let mut list = heapless::Vec::new();
            let mut overflow = false;
            let mut index = 0;
            while let Some(item) = seq.next_element_seed(EventSeed(self.0, index))? {
                if list.push(item).is_err() {
                    overflow = true;
                }
                index += 1;
            }
            Ok((list, overflow))
        }
    }

    struct EventSeed<'t>(&'t Tracker, usize);

    impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
        type Value = RawEvent;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawEvent, D::Error> {
            self.0
                .set(FieldPath::nested("scheduled_events", Some(self.1), ""));
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for EventSeed<'_> {
        type Value = RawEvent;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event object")
        }
        #[inline(never)]
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEvent, A::Error> {
            let (t, i) = (self.0, self.1);
            let mut raw = RawEvent::default();
            read_map(map, |key, map| {
                t.set(FieldPath::nested("scheduled_events", Some(i), key));
                match key {
                    "EventType" => next_str_into(map, &mut raw.kind)?,
                    "appear_after_s" => raw.appear_after_s = Some(map.next_value()?),
                    "notice_s" => raw.notice_s = Some(map.next_value()?),
                    "DurationInSeconds" => raw.duration_s = Some(map.next_value()?),
                    "Description" => next_str_into(map, &mut raw.description)?,
                    "EventSource" => next_str_into(map, &mut raw.source)?,
                    k if k.starts_with('_') => {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                    other => unknown_field(
                        t,
                        FieldPath::nested("scheduled_events", Some(i), other),
                        map,
                    )?,
                }
                Ok(())
            })?;
            Ok(raw)
        }
    }

    /// Validate `scheduled_events` (absent: none).
    #[inline(never)]
    pub(super) fn validate_events(
        raw: Option<&RawEvents>,
    ) -> Result<heapless::Vec<EventConfig, MAX_SCHEDULED_EVENTS>, ConfigError> {
        let mut out = heapless::Vec::new();
        let Some((list, overflow)) = raw else {
            return Ok(out);
        };
        if *overflow {
            return Err(invalid_top(
                "scheduled_events",
                "too many events: at most 6 (MAX_SCHEDULED_EVENTS)",
            ));
        }
        for (i, r) in list.iter().enumerate() {
            let p = |sub: &str| FieldPath::nested("scheduled_events", Some(i), sub);
            let kind = match r.kind.as_deref() {
                None => return Err(ConfigError::Missing(p("EventType"))),
                Some(k) => EventType::parse(k).ok_or(ConfigError::Invalid {
                    field: p("EventType"),
                    why: "must be \"Freeze\", \"Reboot\", \"Redeploy\", \"Preempt\" or \"Terminate\"",
                })?,
            };
            let duration_s = match r.duration_s {
                None => -1,
                Some(d) if (-1..=i64::from(i32::MAX)).contains(&d) => d as i32,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        field: p("DurationInSeconds"),
                        why: "must be -1 (unknown) or a number of seconds",
                    })
                }
            };
            let user_source = match r.source.as_deref() {
                None | Some("Platform") => false,
                Some("User") => true,
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        field: p("EventSource"),
                        why: "must be \"Platform\" or \"User\"",
                    })
                }
            };
            // Cannot overflow: the raw list has the same capacity.
            let _ = out.push(EventConfig {
                kind,
                appear_after_s: r.appear_after_s.unwrap_or(0),
                notice_s: r.notice_s.unwrap_or(kind.default_notice_s()),
                duration_s,
                description: r.description.clone().unwrap_or_default(),
                user_source,
            });
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Why a build without the `attested` feature refuses `attestation`.
#[cfg(not(feature = "attested"))]
const NEEDS_ATTESTED: &str = "the attested document needs a build with the `attested` feature \
    (cargo xtask run --features attested; cargo build -p imds-unikernel --features attested)";
/// Why a build without the `scheduled-events` feature refuses `scheduled_events`.
#[cfg(not(feature = "scheduled-events"))]
const NEEDS_SCHEDULED_EVENTS: &str = "scheduled events need a build with the `scheduled-events` \
    feature (cargo xtask run --features scheduled-events; cargo build -p imds-unikernel \
    --features scheduled-events)";

/// Why a build without the `broker` feature refuses `authority` and identity keys.
#[cfg(not(feature = "broker"))]
const NEEDS_BROKER: &str = "broker mode needs a build with the `broker` feature \
    (cargo build -p imds-unikernel --features broker); this build only issues tokens itself";

/// Whether `s` is a GUID in the 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn guid(value: Option<&Str<64>>, path: FieldPath) -> Result<Guid, ConfigError> {
    let v = value.ok_or_else(|| ConfigError::Missing(path.clone()))?;
    if !is_guid(v) {
        return Err(ConfigError::Invalid {
            field: path,
            why: "must be a GUID like 00000000-0000-0000-0000-000000000000",
        });
    }
    let mut out = Guid::new();
    for c in v.chars() {
        let _ = out.push(c.to_ascii_lowercase());
    }
    Ok(out)
}

#[cfg(any(feature = "std", feature = "broker"))]
fn socket_addr(v: &str, path: FieldPath) -> Result<SocketAddr, ConfigError> {
    v.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
        field: path,
        why: "must be an address and port like 127.0.0.1:8080",
    })
}

#[cfg(feature = "broker")]
/// `spki_sha256`: 32 bytes from base64 (as `openssl dgst -sha256 -binary | base64` prints
/// them) or hex, with or without curl's `sha256//` prefix.
fn spki_pin(v: &str) -> Option<[u8; 32]> {
    use base64ct::Encoding as _;
    let v = v.trim();
    let v = v.strip_prefix("sha256//").unwrap_or(v);
    let mut pin = [0u8; 32];
    if v.len() == 64 {
        if !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        for (byte, pair) in pin.iter_mut().zip(v.as_bytes().chunks(2)) {
            let hex = core::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(hex, 16).ok()?;
        }
        return Some(pin);
    }
    let mut buf = [0u8; 33];
    match base64ct::Base64::decode(v, &mut buf).map(<[u8]>::len) {
        Ok(32) => {
            pin.copy_from_slice(&buf[..32]);
            Some(pin)
        }
        _ => None,
    }
}

#[cfg(feature = "broker")]
#[inline(never)]
fn validate_authority(raw: &RawAuthority) -> Result<AuthorityConfig, ConfigError> {
    let p = |sub| FieldPath::nested("authority", None, sub);
    let url = raw
        .token_url
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(p("token_url")))?;
    let bad_url = || ConfigError::Invalid {
        field: p("token_url"),
        why: "must be an https:// URL like https://login.example/tenant/oauth2/token",
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad_url)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, port)) => (h, port.parse::<u16>().map_err(|_| bad_url())?),
        None => (authority, 443),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(bad_url());
    }
    let trust = match (&raw.ca_cert, &raw.spki_sha256) {
        (Some(Ok(der)), None) => Trust::Ca(der.clone()),
        (Some(Err(why)), _) => {
            return Err(ConfigError::Invalid {
                field: p("ca_cert"),
                why,
            })
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                field: p("spki_sha256"),
                why: "give either ca_cert or spki_sha256, not both",
            })
        }
        (None, Some(pin)) => Trust::SpkiSha256(spki_pin(pin).ok_or(ConfigError::Invalid {
            field: p("spki_sha256"),
            why: "must be the SHA-256 of the server's public key (DER SubjectPublicKeyInfo): \
                  44 base64 characters or 64 hex digits, optionally after \"sha256//\"",
        })?),
        (None, None) => return Err(ConfigError::Missing(p("ca_cert"))),
    };
    let style = match raw.style.as_deref() {
        None | Some("v1") => Style::V1,
        Some("v2") => Style::V2,
        Some(_) => {
            return Err(ConfigError::Invalid {
                field: p("style"),
                why: "must be \"v1\" (resource=) or \"v2\" (scope=R/.default)",
            })
        }
    };
    let address = match &raw.address {
        Some(a) => Some(socket_addr(a, p("address"))?),
        None => None,
    };
    let timeout_s = raw
        .timeout_s
        .unwrap_or((FETCH_TOTAL_TIMEOUT_US / 1_000_000) as u32);
    if !(1..=120).contains(&timeout_s) {
        return Err(ConfigError::Invalid {
            field: p("timeout_s"),
            why: "must be between 1 and 120 seconds",
        });
    }
    Ok(AuthorityConfig {
        timeout_us: timeout_s as u64 * 1_000_000,
        token_url: url.clone(),
        host: heapless::String::try_from(host).map_err(|_| bad_url())?,
        port,
        path: heapless::String::try_from(path).map_err(|_| bad_url())?,
        trust,
        style,
        address,
    })
}

#[cfg(feature = "broker")]
#[inline(never)]
fn validate_credential(
    r: &RawIdentity,
    i: usize,
    broker: bool,
) -> Result<Option<Credential>, ConfigError> {
    let p = |sub: &str| FieldPath::nested("identities", Some(i), sub);
    let key = match (&r.key, broker) {
        (None, false) => return Ok(None),
        (Some(_), false) => {
            return Err(ConfigError::Invalid {
                field: p("key"),
                why: "identity keys are used in broker mode only: add an `authority`",
            })
        }
        (None, true) => return Err(ConfigError::Missing(p("key"))),
        (Some(Err(why)), true) => {
            return Err(ConfigError::Invalid {
                field: p("key"),
                why,
            })
        }
        (Some(Ok(k)), true) => k.clone(),
    };
    let alg = Alg::parse(r.alg.as_deref(), &key).map_err(|why| ConfigError::Invalid {
        field: p("alg"),
        why,
    })?;
    let cert = match &r.certificate {
        None => None,
        Some(Ok(t)) => Some(t.clone()),
        Some(Err(why)) => {
            return Err(ConfigError::Invalid {
                field: p("certificate"),
                why,
            })
        }
    };
    let kid = key.kid();
    Ok(Some(Credential {
        alg,
        key,
        kid,
        cert,
    }))
}

#[inline(never)]
fn validate_identities(
    raw: &Raw,
) -> Result<heapless::Vec<IdentityConfig, MAX_IDENTITIES>, ConfigError> {
    let list = raw
        .identities
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(FieldPath::top("identities")))?;
    if raw.identities_overflow {
        return Err(invalid_top("identities", "too many identities: at most 1 system-assigned and 32 user-assigned (MAX_USER_IDENTITIES)"));
    }
    let mut out: heapless::Vec<IdentityConfig, MAX_IDENTITIES> = heapless::Vec::new();
    let (mut systems, mut users) = (0usize, 0usize);
    for (i, r) in list.iter().enumerate() {
        let p = |sub: &str| FieldPath::nested("identities", Some(i), sub);
        let kind = match r.kind.as_deref() {
            Some("system") => IdentityKind::System,
            Some("user") => IdentityKind::User,
            Some(_) => return Err(invalid_at(i, "kind", "must be \"system\" or \"user\"")),
            None => return Err(ConfigError::Missing(p("kind"))),
        };
        match kind {
            IdentityKind::System => systems += 1,
            IdentityKind::User => users += 1,
        }
        if systems > 1 {
            return Err(invalid_at(
                i,
                "kind",
                "only one system-assigned identity is allowed",
            ));
        }
        if users > MAX_USER_IDENTITIES {
            return Err(invalid_top(
                "identities",
                "too many user-assigned identities: at most 32 (MAX_USER_IDENTITIES)",
            ));
        }
        let client_id = guid(r.client_id.as_ref(), p("client_id"))?;
        let object_id = guid(r.object_id.as_ref(), p("object_id"))?;
        let resource_id = r
            .resource_id
            .clone()
            .ok_or_else(|| ConfigError::Missing(p("resource_id")))?;
        if !resource_id.starts_with('/') || resource_id.len() < 2 {
            return Err(invalid_at(i, "resource_id", "must be an ARM resource id like /subscriptions/<sub>/resourceGroups/<rg>/providers/..."));
        }
        for (j, prev) in out.iter().enumerate() {
            let dup = if prev.client_id == client_id {
                Some("client_id")
            } else if prev.object_id == object_id {
                Some("object_id")
            } else if prev.resource_id.eq_ignore_ascii_case(&resource_id) {
                Some("resource_id")
            } else {
                None
            };
            if let Some(which) = dup {
                let _ = j;
                return Err(invalid_at(i, which, "is the same as an earlier identity's"));
            }
        }
        #[cfg(feature = "broker")]
        let credential = validate_credential(r, i, raw.authority.is_some())?;
        #[cfg(not(feature = "broker"))]
        if let Some(field) = r.broker_field {
            return Err(invalid_at(i, field, NEEDS_BROKER));
        }
        // Cannot overflow: the list itself has this capacity.
        let _ = out.push(IdentityConfig {
            kind,
            client_id,
            object_id,
            resource_id,
            #[cfg(feature = "broker")]
            credential,
        });
    }
    if out.is_empty() {
        return Err(invalid_top("identities", "must list at least one identity"));
    }
    Ok(out)
}

/// `identities[i].sub` is wrong (built out of line: one copy of the path code).
#[inline(never)]
fn invalid_at(i: usize, sub: &str, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field: FieldPath::nested("identities", Some(i), sub),
        why,
    }
}

/// The field `sub` of the object `name` is wrong.
#[inline(never)]
fn invalid_in(name: &str, sub: &str, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field: FieldPath::nested(name, None, sub),
        why,
    }
}

/// The top-level field `name` is wrong.
#[inline(never)]
fn invalid_top(name: &str, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        field: FieldPath::top(name),
        why,
    }
}

#[inline(never)]
fn validate_network(raw: &RawNetwork) -> Result<NetworkConfig, ConfigError> {
    let p = |sub| FieldPath::nested("network", None, sub);
    let addr = raw
        .address
        .as_ref()
        .ok_or_else(|| ConfigError::Missing(p("address")))?;
    let parsed = addr.split_once('/').and_then(|(ip, len)| {
        let prefix_len = len.parse::<u8>().ok().filter(|l| (1..=32).contains(l))?;
        Some((crate::guard::parse_ipv4(ip)?, prefix_len))
    });
    let Some((address, prefix_len)) = parsed else {
        return Err(invalid_in(
            "network",
            "address",
            "must be an IPv4 address with a prefix length like 10.0.2.15/24",
        ));
    };
    let gateway = match raw.gateway.as_ref() {
        Some(g) => Some(
            crate::guard::parse_ipv4(g)
                .ok_or_else(|| invalid_in("network", "gateway", "must be an IPv4 address"))?,
        ),
        None => None,
    };
    Ok(NetworkConfig {
        address,
        prefix_len,
        gateway,
    })
}

impl Config {
    /// Parse and validate a configuration document.
    ///
    /// Never inlined: the image's boot function would otherwise carry the parser's locals
    /// (issuer image -64 B).
    #[inline(never)]
    pub fn parse(doc: &[u8]) -> Result<Config, ConfigError> {
        let tracker = Tracker {
            at: RefCell::new(None),
            unknown: RefCell::new(None),
            problem: RefCell::new(None),
        };
        let mut scratch = [0u8; CONFIG_STRING_MAX];
        let mut raw = Raw::default();
        let parsed = {
            let mut de = serde_json_core::de::Deserializer::new(doc, Some(&mut scratch));
            RawSeed(&tracker, &mut raw)
                .deserialize(&mut de)
                .and_then(|()| de.end())
        };
        scratch.zeroize();
        if let Some(problem) = tracker.problem.take() {
            return Err(problem);
        }
        parsed.map_err(|e| ConfigError::Syntax {
            at: tracker.at.borrow().clone(),
            detail: json_detail(&e),
        })?;
        if let Some(u) = tracker.unknown.into_inner() {
            return Err(ConfigError::Unknown(u));
        }
        Self::validate(&mut raw)
    }

    /// `raw`'s documents are moved into the config (not copied).
    #[inline(never)]
    fn validate(raw: &mut Raw) -> Result<Config, ConfigError> {
        let tenant_id = guid(raw.tenant_id.as_ref(), FieldPath::top("tenant_id"))?;
        let issuer = match &raw.issuer {
            Some(i) => {
                if !(i.starts_with("https://") || i.starts_with("http://")) {
                    return Err(invalid_top("issuer", "must be an http:// or https:// URL"));
                }
                i.clone()
            }
            None => {
                let mut s = heapless::String::new();
                s.put("https://sts.windows.net/").put(&tenant_id).put("/");
                s
            }
        };
        let token_lifetime_s = raw.token_lifetime_s.unwrap_or(DEFAULT_TOKEN_LIFETIME_S);
        if !(600..=7 * 86_400).contains(&token_lifetime_s) {
            return Err(invalid_top(
                "token_lifetime_s",
                "must be between 600 (10 minutes) and 604800 (7 days)",
            ));
        }
        let refresh_margin_s = raw.refresh_margin_s.unwrap_or(DEFAULT_REFRESH_MARGIN_S);
        if refresh_margin_s >= token_lifetime_s / 2 {
            return Err(invalid_top(
                "refresh_margin_s",
                "must be less than half of token_lifetime_s",
            ));
        }
        #[cfg(feature = "broker")]
        let authority = match &raw.authority {
            Some(a) => Some(validate_authority(a)?),
            None => None,
        };
        #[cfg(feature = "broker")]
        let brokered = authority.is_some();
        #[cfg(not(feature = "broker"))]
        let brokered = if raw.authority {
            return Err(invalid_top("authority", NEEDS_BROKER));
        } else {
            false
        };
        let signing_key = match (&raw.signing_key, brokered) {
            (Some(pem), _) => Some(SigningKey(
                parse_signing_key(pem).map_err(|why| invalid_top("signing_key", why))?,
            )),
            (None, true) => None,
            (None, false) => return Err(ConfigError::Missing(FieldPath::top("signing_key"))),
        };
        #[cfg(feature = "std")]
        let listen = {
            let l = raw.listen.as_ref();
            let imds = match l.and_then(|l| l.imds.as_ref()) {
                Some(a) => socket_addr(a, FieldPath::nested("listen", None, "imds"))?,
                None => socket_addr(DEFAULT_IMDS_LISTEN, FieldPath::top("listen"))?,
            };
            let legacy = match l.and_then(|l| l.legacy.as_ref()) {
                Some(Some(a)) => Some(socket_addr(a, FieldPath::nested("listen", None, "legacy"))?),
                Some(None) => None,
                None => Some(socket_addr(
                    DEFAULT_LEGACY_LISTEN,
                    FieldPath::top("listen"),
                )?),
            };
            ListenConfig { imds, legacy }
        };
        #[cfg(feature = "std")]
        let hosts = HostsConfig {
            app_service: validate_host_endpoint(raw.app_service.as_ref(), "app_service")?,
            azure_ml: validate_host_endpoint(raw.azure_ml.as_ref(), "azure_ml")?,
            arc: validate_arc(raw.arc.as_ref())?,
        };
        #[cfg(not(feature = "std"))]
        if let Some(field) = raw.host_only {
            return Err(invalid_top(field, HOST_DAEMON_ONLY));
        }
        let network = match &raw.network {
            Some(n) => Some(validate_network(n)?),
            None => None,
        };
        let identities = validate_identities(raw)?;
        let allow = match &raw.allow {
            None => None,
            Some(list) => {
                let mut out = heapless::Vec::new();
                for (i, rule) in list.iter().enumerate() {
                    let cidr = Cidr::parse(rule).ok_or(ConfigError::Invalid {
                        field: FieldPath {
                            field: truncated("allow"),
                            index: Some(i),
                            sub: None,
                        },
                        why: if cfg!(feature = "std") {
                            "must be an address block like 10.0.0.0/8 or fd00::/8"
                        } else {
                            "must be an IPv4 address block like 10.0.0.0/8 (the unikernel has no IPv6)"
                        },
                    })?;
                    let _ = out.push(cidr);
                }
                Some(out)
            }
        };
        let allow_hosts = raw.allow_hosts.clone().unwrap_or_default();
        let limits = match &raw.limits {
            None => LimitsConfig::default(),
            Some(l) => LimitsConfig {
                rate_per_s: l.rate_per_s.unwrap_or(DEFAULT_RATE_PER_S),
                in_flight: l.in_flight.unwrap_or(DEFAULT_IN_FLIGHT),
            },
        };
        #[cfg(not(all(feature = "attested", feature = "scheduled-events")))]
        if let Some((field, why)) = raw.needs_feature {
            return Err(invalid_top(field, why));
        }
        #[cfg(feature = "attested")]
        let attestation = match &raw.attestation {
            Some(a) => Some(validate_attestation(a)?),
            None => None,
        };
        #[cfg(feature = "scheduled-events")]
        let scheduled_events = validate_events(raw.scheduled_events.as_ref())?;
        #[cfg(any(feature = "attested", feature = "scheduled-events"))]
        let compute = Compute::from_instance(raw.metadata.instance.bytes()).map_err(|name| {
            let mut sub: heapless::String<32> = heapless::String::new();
            for c in "compute.".chars().chain(name.chars()) {
                let _ = sub.push(if c == '/' { '.' } else { c });
            }
            ConfigError::Invalid {
                field: FieldPath::nested("instance", None, &sub),
                why: "is longer than 64 characters (the attested document and scheduled \
                      events carry it)",
            }
        })?;
        Ok(Config {
            #[cfg(feature = "attested")]
            attestation,
            #[cfg(feature = "scheduled-events")]
            scheduled_events,
            #[cfg(any(feature = "attested", feature = "scheduled-events"))]
            compute,
            tenant_id,
            issuer,
            token_lifetime_s,
            refresh_margin_s,
            signing_key,
            #[cfg(feature = "broker")]
            authority,
            #[cfg(feature = "std")]
            listen,
            #[cfg(feature = "std")]
            hosts,
            network,
            identities,
            allow,
            allow_hosts,
            limits,
            metadata: core::mem::take(&mut raw.metadata),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed P-256 test key (PKCS#8 PEM), used only by tests.
    pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\\nOF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\\n1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G\\n-----END PRIVATE KEY-----\\n";

    pub fn doc(extra: &str, identities: &str) -> heapless::String<8192> {
        let mut s = heapless::String::new();
        fmt::write(
            &mut s,
            format_args!(
                "{{\"tenant_id\":\"72f988bf-86f1-41af-91ab-2d7cd011db47\",\"signing_key\":\"{TEST_KEY_PEM}\",{extra}\"identities\":[{identities}]}}"
            ),
        )
        .unwrap();
        s
    }

    pub const SYS: &str = r#"{"kind":"system","client_id":"11111111-1111-1111-1111-111111111111","object_id":"21111111-1111-1111-1111-111111111111","resource_id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"}"#;
    pub const USER1: &str = r#"{"kind":"user","client_id":"12222222-2222-2222-2222-222222222222","object_id":"22222222-2222-2222-2222-222222222222","resource_id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/one"}"#;
    pub const USER2: &str = r#"{"kind":"user","client_id":"13333333-3333-3333-3333-333333333333","object_id":"23333333-3333-3333-3333-333333333333","resource_id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/two"}"#;

    #[test]
    fn fresh_guids_are_version_4() {
        assert_eq!(guid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(guid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        let g = guid_v4(*b"0123456789abcdef");
        assert!(guid(Some(&g.as_str().try_into().unwrap()), FieldPath::top("x")).is_ok());
    }

    fn err(d: &str) -> heapless::String<256> {
        let e = Config::parse(d.as_bytes()).unwrap_err();
        let mut s = heapless::String::new();
        fmt::write(&mut s, format_args!("{e}")).unwrap();
        s
    }

    #[test]
    fn reads_the_other_hosts_endpoints() {
        let c = Config::parse(doc("", SYS).as_bytes()).unwrap();
        assert_eq!(c.hosts, HostsConfig::default());
        let d = doc(
            r#""app_service":{"listen":"127.0.0.1:8081","secret":"abc"},"azure_ml":null,"#,
            SYS,
        );
        let c = Config::parse(d.as_bytes()).unwrap();
        let a = c.hosts.app_service.as_ref().unwrap();
        assert_eq!(a.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(a.secret.as_str(), "abc");
        assert!(c.hosts.azure_ml.is_none());
        // The secret never shows in Debug.
        assert!(!std::format!("{c:?}").contains("\"abc\""));
        let e = err(&doc(r#""azure_ml":{"listen":"127.0.0.1:1"},"#, SYS));
        assert!(e.contains("`azure_ml.secret`"), "{e}");
        let e = err(&doc(r#""azure_ml":{"secret":"x"},"#, SYS));
        assert!(e.contains("`azure_ml.listen`"), "{e}");
        let e = err(&doc(
            r#""app_service":{"listen":"nope","secret":"x"},"#,
            SYS,
        ));
        assert!(e.contains("`app_service.listen`"), "{e}");
        for bad in ["", "a b", "tab\\there"] {
            let e = err(&doc(
                &std::format!(r#""app_service":{{"listen":"127.0.0.1:1","secret":"{bad}"}},"#),
                SYS,
            ));
            assert!(e.contains("`app_service.secret`"), "{bad:?}: {e}");
        }
        let e = err(&doc(
            r#""app_service":{"listen":"127.0.0.1:1","secret":"x","port":1},"#,
            SYS,
        ));
        assert!(e.contains("`app_service.port`"), "{e}");
    }

    #[test]
    fn reads_arc() {
        let c =
            Config::parse(doc(r#""arc":{"listen":"127.0.0.1:40342"},"#, SYS).as_bytes()).unwrap();
        let a = c.hosts.arc.unwrap();
        assert_eq!(a.listen, "127.0.0.1:40342".parse().unwrap());
        assert_eq!(a.key_dir.as_str(), DEFAULT_ARC_KEY_DIR);
        let d = doc(
            r#""arc":{"listen":"127.0.0.1:1","key_dir":"/tmp/k/"},"#,
            SYS,
        );
        assert_eq!(
            Config::parse(d.as_bytes())
                .unwrap()
                .hosts
                .arc
                .unwrap()
                .key_dir
                .as_str(),
            "/tmp/k"
        );
        for bad in ["tokens", "/", "/a b", ""] {
            let e = err(&doc(
                &std::format!(r#""arc":{{"listen":"127.0.0.1:1","key_dir":"{bad}"}},"#),
                SYS,
            ));
            assert!(e.contains("`arc.key_dir`"), "{bad:?}: {e}");
        }
        let e = err(&doc(r#""arc":{"key_dir":"/x"},"#, SYS));
        assert!(e.contains("`arc.listen`"), "{e}");
    }

    #[test]
    fn parses_a_full_document() {
        let d = doc(
            r#""issuer":"https://sts.windows.net/t/","token_lifetime_s":3600,"listen":{"imds":"127.0.0.1:8080","legacy":null},"network":{"address":"10.0.2.15/24","gateway":"10.0.2.2"},"#,
            &[SYS, USER1, USER2].join(","),
        );
        let c = Config::parse(d.as_bytes()).unwrap();
        assert_eq!(c.identities.len(), 3);
        assert_eq!(c.token_lifetime_s, 3600);
        assert_eq!(c.refresh_margin_s, DEFAULT_REFRESH_MARGIN_S);
        assert_eq!(c.listen.imds, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.listen.legacy, None);
        let n = c.network.unwrap();
        assert_eq!((n.address, n.prefix_len), (Ipv4Addr::new(10, 0, 2, 15), 24));
        assert_eq!(c.issuer.as_str(), "https://sts.windows.net/t/");
    }

    #[test]
    fn defaults() {
        let c = Config::parse(doc("", SYS).as_bytes()).unwrap();
        assert_eq!(c.token_lifetime_s, DEFAULT_TOKEN_LIFETIME_S);
        assert_eq!(
            c.issuer.as_str(),
            "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"
        );
        assert_eq!(c.listen.legacy, Some("127.0.0.1:50342".parse().unwrap()));
        assert!(c.network.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("{").as_str(), "config: unexpected end of the document");
        assert_eq!(err("[]").as_str(), "config: has the wrong type");
        assert_eq!(
            err(&doc(r#""token_lifetime_s":"x","#, SYS)).as_str(),
            "config: field `token_lifetime_s`: has the wrong type"
        );
        assert_eq!(
            err(&doc(r#""token_lifetime_s":5,"#, SYS)).as_str(),
            "config: field `token_lifetime_s`: must be between 600 (10 minutes) and 604800 (7 days)"
        );
        assert!(
            err(&doc(r#""tokn_lifetime_s":5,"#, SYS)).contains("unknown field `tokn_lifetime_s`")
        );
        let bad_guid = USER1.replace("12222222-2222", "zz");
        assert!(err(&doc("", &bad_guid))
            .starts_with("config: field `identities[0].client_id`: must be a GUID"));
        let no_kind = USER1.replace(r#""kind":"user","#, "");
        assert_eq!(
            err(&doc("", &no_kind)).as_str(),
            "config: field `identities[0].kind` is required"
        );
        assert!(err(&doc("", &[SYS, SYS].join(","))).contains("identities[1]"));
        assert!(err(&doc(r#""listen":{"imds":"nope"},"#, SYS)).contains("`listen.imds`"));
        assert!(err(&doc(r#""network":{"address":"1.2.3.4"},"#, SYS)).contains("`network.address`"));
        assert!(err(&doc("", "")).contains("at least one identity"));
        let wrong_type = r#"{"kind":"user","client_id":5}"#;
        assert_eq!(
            err(&doc("", wrong_type)).as_str(),
            "config: field `identities[0].client_id`: has the wrong type"
        );
        let d = doc("", SYS).replace("MIGHAgEA", "MIGHAgEB");
        assert!(err(&d).starts_with("config: field `signing_key`"));
    }

    #[cfg(feature = "broker")]
    #[test]
    fn spki_pins_in_base64_or_hex() {
        // SHA-256 of "abc", both spellings.
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        let want = spki_pin(hex).unwrap();
        assert_eq!(want[..2], [0xba, 0x78]);
        assert_eq!(spki_pin(b64), Some(want));
        assert_eq!(spki_pin(&std::format!("sha256//{b64}")), Some(want));
        assert_eq!(spki_pin(&hex.to_uppercase()), Some(want));
        for bad in [
            "",
            "abc",
            &hex[..62],
            &b64[..40],
            "+a7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert_eq!(spki_pin(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_capacity_is_enforced() {
        let mut ids: std::vec::Vec<std::string::String> = std::vec::Vec::new();
        for i in 0..MAX_USER_IDENTITIES + 1 {
            ids.push(std::format!(
                r#"{{"kind":"user","client_id":"00000000-0000-0000-0000-{i:012}","object_id":"10000000-0000-0000-0000-{i:012}","resource_id":"/subscriptions/s/u/{i}"}}"#
            ));
        }
        let all = ids.join(",");
        let mut big = std::string::String::new();
        big.push_str(&std::format!(
            "{{\"tenant_id\":\"72f988bf-86f1-41af-91ab-2d7cd011db47\",\"signing_key\":\"{TEST_KEY_PEM}\",\"identities\":[{all}]}}"
        ));
        let e = Config::parse(big.as_bytes()).unwrap_err();
        assert!(std::format!("{e}").contains("too many"), "{e}");
        // Exactly the capacity is fine.
        let ok = ids[..MAX_USER_IDENTITIES].join(",");
        let doc_ok = std::format!(
            "{{\"tenant_id\":\"72f988bf-86f1-41af-91ab-2d7cd011db47\",\"signing_key\":\"{TEST_KEY_PEM}\",\"identities\":[{ok}]}}"
        );
        assert_eq!(
            Config::parse(doc_ok.as_bytes()).unwrap().identities.len(),
            MAX_USER_IDENTITIES
        );
    }

    /// Without the `broker` feature, broker-mode fields are refused at parse time, like any
    /// other config error (with the feature they are parsed: see the broker tests).
    #[cfg(not(feature = "broker"))]
    #[test]
    fn broker_fields_need_the_broker_feature() {
        let e = err(&doc(r#""authority":{"token_url":"https://a/t"},"#, SYS));
        assert!(
            e.starts_with(
                "config: field `authority`: broker mode needs a build with the `broker` feature"
            ),
            "{e}"
        );
        // `null` is no authority.
        assert!(Config::parse(doc(r#""authority":null,"#, SYS).as_bytes()).is_ok());
        for field in ["key", "alg", "certificate"] {
            let id = SYS.replace(r#""kind""#, &std::format!(r#""{field}":"x","kind""#));
            let e = err(&doc("", &id));
            assert!(
                e.starts_with(&std::format!(
                    "config: field `identities[0].{field}`: broker mode needs a build with the `broker` feature"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn too_long_strings_name_their_field() {
        let long = "a".repeat(300);
        let cases = [
            (
                std::format!("{{\"kind\":\"user\",\"client_id\":\"{long}\"}}"),
                "config: field `identities[0].client_id`: invalid value",
            ),
            (
                "{\"kind\":\"user\",\"object_id\":null}".into(),
                "config: field `identities[0].object_id`: has the wrong type",
            ),
        ];
        for (identity, want) in cases {
            let d = super::tests::doc("", &identity);
            let e = Config::parse(d.as_bytes()).unwrap_err();
            assert_eq!(std::format!("{e}"), want);
        }
        let d = super::tests::doc(&std::format!("\"allow_hosts\":[\"{long}\"],"), "");
        let e = Config::parse(d.as_bytes()).unwrap_err();
        assert_eq!(
            std::format!("{e}"),
            "config: field `allow_hosts`: invalid value"
        );
        let hosts = std::vec!["\"h\""; MAX_ALLOW_HOSTS + 1].join(",");
        let d = super::tests::doc(&std::format!("\"allow_hosts\":[{hosts}],"), "");
        let e = Config::parse(d.as_bytes()).unwrap_err();
        assert_eq!(
            std::format!("{e}"),
            "config: field `allow_hosts`: invalid value"
        );
        let d = super::tests::doc(
            "\"network\":{\"address\":\"10.0.2.15/24\",\"gateway\":null},",
            "",
        );
        assert!(
            Config::parse(d.as_bytes()).is_err_and(|e| std::format!("{e}").contains("identities"))
        );
    }

    #[test]
    fn debug_redacts_the_key() {
        let c = Config::parse(doc("", SYS).as_bytes()).unwrap();
        let s = std::format!("{c:?}");
        assert!(s.contains("<redacted>"));
    }
}
