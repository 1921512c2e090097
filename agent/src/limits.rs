//! Every capacity of the agent, in one place.
//!
//! The core allocates nothing: each table and buffer below is a fixed array whose size is one
//! of these constants. What happens when one is full is part of the behaviour (and tested):
//! the comment on each says what the agent answers then.

/// User-assigned identities the agent can hold (plus one system-assigned).
/// Full: the config is rejected with an error naming `identities`.
pub const MAX_USER_IDENTITIES: usize = 32;
/// All identities (user-assigned + the optional system-assigned one).
pub const MAX_IDENTITIES: usize = MAX_USER_IDENTITIES + 1;

/// Cached tokens, keyed by (identity, resource).
/// Full: the entry that expires soonest is evicted to make room.
pub const TOKEN_CACHE_CAPACITY: usize = 64;

/// Longest access token the agent stores or serves (bytes). A longer upstream token is an
/// upstream error (500), never truncated.
pub const TOKEN_MAX: usize = 2048;

/// Longest `resource` value (after URL-decoding). Longer: 400 `invalid_request`.
pub const RESOURCE_MAX: usize = 256;

/// Longest ARM resource id of an identity (config and `msi_res_id`).
pub const RESOURCE_ID_MAX: usize = 256;

/// Longest issuer URL / tenant id / host name kept from the config.
pub const URL_MAX: usize = 256;

/// Request head (request line + headers) limit. Larger: 431, then close.
pub const REQUEST_HEAD_MAX: usize = 4096;
/// Request target (path + query) limit. Longer: 414, then close.
pub const REQUEST_TARGET_MAX: usize = 2048;
/// Headers in one request. More: 431, then close.
pub const MAX_HEADERS: usize = 32;
/// Request body limit (form `POST` to the legacy endpoint). Larger: 413, then close.
pub const REQUEST_BODY_MAX: usize = 1024;
/// Receive buffer of one connection: a whole request must fit.
pub const CONN_RX_BUF: usize = REQUEST_HEAD_MAX + REQUEST_BODY_MAX;
/// Send buffer of one connection: one whole response must fit.
pub const CONN_TX_BUF: usize = TOKEN_MAX + RESOURCE_MAX + RESOURCE_ID_MAX + 1024;

/// Query / form parameters in one request. More: 400 `invalid_request`.
pub const MAX_PARAMS: usize = 16;
/// Bytes of decoded query / form values of one request.
pub const PARAM_DECODE_BUF: usize = REQUEST_TARGET_MAX;

/// Listening TCP sockets of the unikernel (smoltcp has no backlog: this is its concurrency).
pub const LISTEN_SOCKETS: usize = 16;
/// Connections the host daemon keeps at once. Full: the longest-idle one is closed.
pub const HOST_MAX_CONNECTIONS: usize = 4096;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT_US: u64 = 30_000_000;
/// A request head must arrive completely within this time of its first byte (slowloris).
pub const HEAD_DEADLINE_US: u64 = 10_000_000;

/// Receive buffer of one listening TCP socket of the unikernel (the advertised window). A request larger than this
/// arrives in several polls.
pub const TCP_RX_BUF: usize = 2048;
/// Send buffer of one listening TCP socket of the unikernel. A response larger than this leaves in several polls.
pub const TCP_TX_BUF: usize = 4096;
/// Longest host name: the authority's (`token_url`), `allow_hosts` entries (RFC 1035 allows
/// 253; these are configured names, checked at parse time).
pub const HOST_NAME_MAX: usize = 64;
/// Longest `error_description` the router writes.
pub const DESCRIPTION_MAX: usize = 128;
/// Largest configuration document. The daemon (`std`) reads it into a heap buffer and takes
/// one big enough for an [`INSTANCE_MAX`] `instance` plus the rest; the unikernel's fw_cfg
/// buffer stays 64 KiB.
#[cfg(not(feature = "std"))]
pub const CONFIG_MAX: usize = 64 * 1024;
/// Largest configuration document (daemon: room for a 128 KiB `instance`).
#[cfg(feature = "std")]
pub const CONFIG_MAX: usize = 256 * 1024;
/// Scratch space for unescaping one JSON string of the config (a PEM key or certificate).
pub const CONFIG_STRING_MAX: usize = 4096;
/// Longest PEM document in the config.
pub const PEM_MAX: usize = 4096;

// ---- broker mode (tokens from an OAuth2 authority) -------------------------------------------

/// Upstream fetches that run at once (each has its own TLS buffers, ~21 KiB).
pub const BROKER_TASKS: usize = 2;
/// Rounds of "poll the broker tasks, serve their pipes" per driver loop turn while bytes keep
/// moving (a TLS flight is several records; the next network poll sends what the last round
/// queued).
pub const TASK_ROUNDS: usize = 4;
/// `Retry-After` of a 503 whose cause names no time (the authority unreachable, a parked
/// request's wait over).
pub const RETRY_AFTER_DEFAULT_S: u32 = 5;
/// A brokered token is not renewed ahead more often than this (short-lived upstream tokens
/// would otherwise be fetched again on every request).
pub const MIN_REFRESH_INTERVAL_US: u64 = 30_000_000;
/// Back-off after the first failed attempt of a fetch; doubled after each further one (at
/// most 16 times this).
pub const FETCH_BACKOFF_FIRST_US: u64 = 500_000;
/// A `Retry-After` from the authority is honoured up to this many seconds between attempts.
pub const FETCH_RETRY_AFTER_MAX_S: u64 = 10;
/// DNS servers kept from DHCP (the authority's host name is resolved with them).
pub const DNS_SERVERS: usize = 3;
/// Receive buffer of one upstream (authority) socket: the window the authority may fill
/// before the TLS session has read it. One TLS record is up to 16 KiB; a token answer is a
/// few KiB.
pub const UPSTREAM_TCP_RX_BUF: usize = 8192;
/// Send buffer of one upstream socket (the TLS handshake's first flight and the token request
/// fit in it).
pub const UPSTREAM_TCP_TX_BUF: usize = 4096;
/// Log lines of the broker tasks kept until the driver prints them (the oldest is dropped).
pub const EVENT_QUEUE: usize = 16;
/// Longest log line of a broker task (longer ones are cut).
pub const EVENT_LINE_MAX: usize = 240;
/// Distinct (identity, resource) fetches queued, in flight or remembered as failed.
/// Full: a request that needs one more gets 503 `service_unavailable` with `Retry-After`.
pub const MAX_PENDING_FETCHES: usize = 16;
/// Largest HTTP answer (head + body) read from the authority. Larger: a malformed answer.
pub const UPSTREAM_RESPONSE_MAX: usize = TOKEN_MAX + 4096;
/// TLS record buffers of one upstream connection (a full TLS record is 16 640 bytes).
pub const TLS_READ_BUF: usize = 16_640;
/// TLS record buffer for writing to the authority.
pub const TLS_WRITE_BUF: usize = 4096;
/// Bytes buffered between an upstream socket and its TLS session, each way.
pub const UPSTREAM_PIPE_BUF: usize = 4096;
/// Largest CA certificate (DER) accepted as the trust anchor.
pub const CA_DER_MAX: usize = 2048;
/// Largest server public key (DER `SubjectPublicKeyInfo`) kept for a pinned authority between
/// its `Certificate` and `CertificateVerify` messages (RSA 4096: 550 bytes).
pub const SPKI_MAX: usize = 600;
/// Connecting to the authority (TCP) must succeed within this time.
pub const FETCH_CONNECT_TIMEOUT_US: u64 = 3_000_000;
/// One whole fetch (connect, TLS, request, answer) must finish within this time.
pub const FETCH_ATTEMPT_TIMEOUT_US: u64 = 8_000_000;
/// All attempts of one fetch (with back-off on 5xx/429) must finish within this time.
pub const FETCH_TOTAL_TIMEOUT_US: u64 = 20_000_000;
/// Attempts per fetch (the first and its retries on 5xx, 429 or a transport failure).
pub const FETCH_ATTEMPTS: u32 = 3;
/// A failed fetch is remembered this long: requests in that time get its error at once.
pub const FETCH_FAILURE_HOLD_US: u64 = 2_000_000;
/// A request waiting for a fetch gets 503 after this long.
pub const FETCH_WAIT_MAX_US: u64 = 25_000_000;

// ---- who may ask ------------------------------------------------------------------------------

/// CIDR rules in the `allow` list (configured, or defaults + own subnets).
pub const MAX_ALLOW_RULES: usize = 16;
/// Host names in `allow_hosts`.
pub const MAX_ALLOW_HOSTS: usize = 8;
/// Sources tracked for the per-source limits. Full: the longest-quiet source without requests
/// in flight is forgotten (its bucket would be full again anyway).
pub const MAX_RATE_SOURCES: usize = 64;

// ---- scheduled events and the attested document (`metadata`) ---------------------------------

/// Configured `scheduled_events`. More: the config is rejected with an error naming
/// `scheduled_events` (one event's JSON is ~460 bytes: all of them fit one reply).
pub const MAX_SCHEDULED_EVENTS: usize = 6;
/// Longest `Description` of a scheduled event. Longer: a config error.
pub const EVENT_DESCRIPTION_MAX: usize = 128;
/// Largest attestation certificate (DER). Larger: a config error.
pub const ATTEST_CERT_DER_MAX: usize = 1280;
/// Longest `nonce` of an attested-document request (alphanumerics). Longer: 400.
pub const ATTEST_NONCE_MAX: usize = 32;
/// Longest value of a `compute` field the attested document and scheduled events carry (vmId,
/// name, sku, plan, ...). Longer: a config error.
pub const COMPUTE_FIELD_MAX: usize = 64;
/// The signed CMS blob (DER) of an attested document: certificate, content, signature.
pub const ATTEST_DER_MAX: usize = ATTEST_CERT_DER_MAX + 1280;
// ---- instance metadata (issue 12) --------------------------------------------------------------

/// Largest `instance` document, as the compact JSON the agent keeps and serves (the unikernel).
/// Larger: the config is refused with an error naming `instance`.
#[cfg(not(feature = "std"))]
pub const INSTANCE_MAX: usize = 16 * 1024;
/// Largest `instance` document, compact JSON (the daemon: Azure allows 64 KB of user data).
#[cfg(feature = "std")]
pub const INSTANCE_MAX: usize = 128 * 1024;
/// Largest `loadbalancer` document, compact JSON. Larger: the config is refused.
#[cfg(not(feature = "std"))]
pub const LOADBALANCER_MAX: usize = 4 * 1024;
/// Largest `loadbalancer` document, compact JSON (the daemon).
#[cfg(feature = "std")]
pub const LOADBALANCER_MAX: usize = 16 * 1024;
/// Deepest nesting of objects and arrays in `instance` / `loadbalancer` (the walkers recurse).
/// Deeper: the config is refused.
pub const METADATA_DEPTH_MAX: usize = 24;
/// Longest sub-path below `/metadata/instance` a connection keeps while it sends a large
/// answer. Longer: 404 (no document key path is that long in Azure's shape).
pub const METADATA_PATH_MAX: usize = 256;
/// Longest field path tracked for version gating and config errors
/// (`compute.storageProfile.dataDisks[].isUltraDisk`). Deeper paths are never gated.
pub const METADATA_FIELD_PATH_MAX: usize = 96;

/// Longest secret of an `app_service` / `azure_ml` endpoint (config), and of the header that
/// carries it.
pub const HOST_SECRET_MAX: usize = 256;

/// Azure Arc: key-file challenges outstanding at once (module `challenge`). Full: 503.
pub const ARC_CHALLENGES: usize = 32;
/// Azure Arc: a challenge's secret expires (and its file is removed) this long after issue.
pub const ARC_KEY_TTL_US: u64 = 30_000_000;
/// Azure Arc: longest `arc.key_dir` (config).
pub const ARC_KEY_DIR_MAX: usize = 128;
/// Azure Arc: longest `WWW-Authenticate` value (`Basic realm=<key_dir>/<32 hex>.key`).
pub const ARC_CHALLENGE_HEADER_MAX: usize = ARC_KEY_DIR_MAX + 64;
