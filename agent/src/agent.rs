//! The [`Agent`]: the state the router works on — the identities, the token sources, the
//! allow-lists and limits — built from a validated [`Config`].
//!
//! In broker mode it is also what the broker tasks work through ([`JobQueue`]): queued
//! fetches out, tokens and failures in, and their log lines, kept until the driver drains
//! them.

#[cfg(feature = "broker")]
use crate::broker::{upstream::TokenAnswer, FetchError, JobQueue, JobSpec};
use crate::config::{Config, Guid};
use crate::guard::Guard;
use crate::identity::IdentityStore;
#[cfg(feature = "broker")]
use crate::limits::{EVENT_LINE_MAX, EVENT_QUEUE};
use crate::token::{Issuer, TokenCache, TokenSource};
#[cfg(feature = "broker")]
#[cfg(feature = "broker")]
use imds_hal::text::Text;

/// The state the router works on: identities, the token sources, the guard.
pub struct Agent {
    pub(crate) identities: IdentityStore,
    pub(crate) tokens: TokenSource,
    pub(crate) guard: Guard,
    pub(crate) tenant: Guid,
    /// The signer of `/metadata/attested/document`.
    #[cfg(feature = "attested")]
    pub(crate) attestation: Option<crate::metadata::attested::Attestation>,
    /// `/metadata/scheduledevents`.
    #[cfg(feature = "scheduled-events")]
    pub(crate) schedule: crate::metadata::events::Schedule,
    /// The `compute` values the attested document and scheduled events carry.
    #[cfg(any(feature = "attested", feature = "scheduled-events"))]
    pub(crate) compute: crate::metadata::compute::Compute,
    /// `/metadata/instance` and `/metadata/loadbalancer` (issue 12).
    pub(crate) metadata: crate::metadata::Documents,
    /// The other Azure hosts' endpoints and their secrets (module `hosts`, issue 13).
    #[cfg(feature = "std")]
    pub(crate) hosts: crate::config::HostsConfig,
    /// Azure Arc's outstanding key-file secrets (module `challenge`).
    #[cfg(feature = "std")]
    pub(crate) arc_keys: crate::challenge::Challenges,
    /// Log lines from the broker tasks, drained by the driver.
    #[cfg(feature = "broker")]
    events: heapless::Deque<heapless::String<EVENT_LINE_MAX>, EVENT_QUEUE>,
}

impl core::fmt::Debug for Agent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Agent")
            .field("identities", &self.identities.len())
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Agent {
    /// Build the agent from a validated configuration.
    ///
    /// Never inlined: run once, its temporaries (key thumbprints, the JWKS) would otherwise
    /// sit in the frame of the driver's never-returning loop (issuer image -256 B).
    #[inline(never)]
    pub fn new(config: Config) -> Agent {
        let Config {
            tenant_id,
            issuer,
            token_lifetime_s,
            refresh_margin_s,
            signing_key,
            identities,
            #[cfg(feature = "broker")]
            authority,
            allow,
            allow_hosts,
            limits,
            #[cfg(feature = "attested")]
            attestation,
            #[cfg(feature = "scheduled-events")]
            scheduled_events,
            #[cfg(any(feature = "attested", feature = "scheduled-events"))]
            compute,
            metadata,
            #[cfg(feature = "std")]
            hosts,
            ..
        } = config;
        #[cfg(feature = "scheduled-events")]
        let schedule = crate::metadata::events::Schedule::new(
            &scheduled_events,
            &[&tenant_id, &compute.vm_id],
        );
        let guard = Guard::new(
            allow.as_deref(),
            &allow_hosts,
            limits.rate_per_s,
            limits.in_flight,
        );
        #[cfg(feature = "broker")]
        let broker = authority.is_some();
        #[cfg(not(feature = "broker"))]
        let broker = false;
        Agent {
            identities: IdentityStore::new(identities),
            tokens: TokenSource::new(
                signing_key.map(|k| Issuer::new(k.0, &issuer, &tenant_id, token_lifetime_s)),
                refresh_margin_s,
                broker,
            ),
            guard,
            tenant: tenant_id,
            #[cfg(feature = "attested")]
            attestation,
            #[cfg(feature = "scheduled-events")]
            schedule,
            #[cfg(any(feature = "attested", feature = "scheduled-events"))]
            compute,
            metadata,
            #[cfg(feature = "std")]
            hosts,
            #[cfg(feature = "std")]
            arc_keys: Default::default(),
            #[cfg(feature = "broker")]
            events: heapless::Deque::new(),
        }
    }

    /// Azure Arc's key directory, when `arc` is configured (host daemon).
    #[cfg(feature = "std")]
    pub fn arc_key_dir(&self) -> Option<&str> {
        self.hosts.arc.as_ref().map(|a| a.key_dir.as_str())
    }

    /// Azure Arc's key files, the daemon's side (see [`crate::challenge::Challenges::sync`]):
    /// write the new ones, remove the used and expired ones.
    #[cfg(feature = "std")]
    pub fn sync_arc_keys(
        &mut self,
        now_us: u64,
        write: impl FnMut(&str, &[u8]) -> bool,
        remove: impl FnMut(&str),
    ) {
        self.arc_keys.sync(now_us, write, remove);
    }

    /// Forget every Arc secret and remove its file (the daemon, at shutdown).
    #[cfg(feature = "std")]
    pub fn clear_arc_keys(&mut self, remove: impl FnMut(&str)) {
        self.arc_keys.clear(remove);
    }

    /// The issuer (issuer mode, or broker mode with a `signing_key`).
    pub fn issuer(&self) -> Option<&Issuer> {
        self.tokens.issuer()
    }

    /// The allow-lists and limits (drivers set the agent's own subnets).
    pub fn guard_mut(&mut self) -> &mut Guard {
        &mut self.guard
    }

    /// Whether a fetch is queued or in flight (drivers poll more often then).
    #[cfg(feature = "broker")]
    pub fn fetching(&self) -> bool {
        self.tokens.fetching()
    }

    /// Write pending log lines.
    #[cfg(feature = "broker")]
    pub fn drain_events<W: core::fmt::Write>(&mut self, log: &mut W) {
        while let Some(line) = self.events.pop_front() {
            log.put(&line).end();
        }
    }

    /// The identities of the configuration.
    pub fn identities(&self) -> &IdentityStore {
        &self.identities
    }

    /// The token cache.
    pub fn cache(&self) -> &TokenCache {
        self.tokens.cache()
    }

    /// The token sources.
    pub fn tokens(&self) -> &TokenSource {
        &self.tokens
    }

    #[cfg(any(feature = "attested", feature = "scheduled-events"))]
    /// A value of the instance's `compute` by its path (`vmId`, `name`, `plan/name`, ...):
    /// what the attested document and scheduled events carry.
    ///
    pub fn compute_field(&self, name: &str) -> Option<&str> {
        self.compute.field(name)
    }
}

#[cfg(feature = "broker")]
impl JobQueue for Agent {
    fn start_job(&mut self) -> Option<JobSpec> {
        loop {
            let (identity, resource) = self.tokens.jobs.start_next()?;
            let Some(id) = self.identities.get(identity) else {
                continue;
            };
            let Some(credential) = id.credential.clone() else {
                self.tokens
                    .jobs
                    .finish(identity, &resource, Err(FetchError::NoCredential), 0, 0);
                continue;
            };
            return Some(JobSpec {
                identity,
                resource,
                client_id: id.client_id.clone(),
                credential,
            });
        }
    }

    fn finish_job(
        &mut self,
        identity: u8,
        resource: &str,
        result: Result<TokenAnswer, FetchError>,
        now_us: u64,
    ) {
        self.tokens.finish_fetch(identity, resource, result, now_us);
    }

    /// Kept until the driver drains it; the oldest is dropped when full.
    fn event(&mut self, text: &str) {
        let mut line: heapless::String<EVENT_LINE_MAX> = heapless::String::new();
        // Cut at the capacity (on a character boundary), as a formatted write would.
        let mut end = text.len().min(EVENT_LINE_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let _ = line.push_str(&text[..end]);
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(line);
    }
}
