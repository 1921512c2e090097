//! Where tokens come from: the [`TokenCache`], the [`Issuer`] (minted now) and, in broker
//! mode (cargo feature `broker`), fetches from the authority (the job table the broker tasks
//! work through).

#[cfg(feature = "broker")]
use super::Token;
use super::{Issuer, TokenCache};
#[cfg(feature = "broker")]
use crate::broker::{upstream::TokenAnswer, FetchError, Jobs};

/// The token sources of an agent.
pub struct TokenSource {
    pub(crate) cache: TokenCache,
    /// Issuer mode's minting key (also present in broker mode if configured: JWKS only).
    pub(crate) issuer: Option<Issuer>,
    /// Broker mode: tokens come from the authority through [`crate::broker::task`].
    #[cfg(feature = "broker")]
    pub(crate) broker: bool,
    #[cfg(feature = "broker")]
    pub(crate) jobs: Jobs,
    #[cfg(feature = "broker")]
    pub(crate) refresh_margin_s: u64,
}

impl core::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("TokenSource");
        d.field("cached_tokens", &self.cache.len())
            .field("issuer", &self.issuer);
        #[cfg(feature = "broker")]
        d.field("broker", &self.broker)
            .field("jobs", &self.jobs.len());
        d.finish()
    }
}

impl TokenSource {
    /// The sources of a configuration: a cache with `refresh_margin_s`, the issuer if there
    /// is a signing key, the authority if `broker`.
    pub fn new(issuer: Option<Issuer>, refresh_margin_s: u32, broker: bool) -> TokenSource {
        #[cfg(not(feature = "broker"))]
        let _ = broker;
        TokenSource {
            cache: TokenCache::new(refresh_margin_s),
            issuer,
            #[cfg(feature = "broker")]
            broker,
            #[cfg(feature = "broker")]
            jobs: Jobs::default(),
            #[cfg(feature = "broker")]
            refresh_margin_s: refresh_margin_s as u64,
        }
    }

    /// The issuer (issuer mode, or broker mode with a `signing_key`).
    pub fn issuer(&self) -> Option<&Issuer> {
        self.issuer.as_ref()
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Whether tokens come from an authority.
    #[cfg(feature = "broker")]
    pub fn is_broker(&self) -> bool {
        self.broker
    }

    /// Whether a fetch is queued or in flight (drivers poll more often then).
    #[cfg(feature = "broker")]
    pub fn fetching(&self) -> bool {
        self.jobs.busy()
    }

    /// A fetch ended: a token goes into the cache; a failure is held for waiting requests.
    #[cfg(feature = "broker")]
    pub fn finish_fetch(
        &mut self,
        identity: u8,
        resource: &str,
        result: Result<TokenAnswer, FetchError>,
        now_us: u64,
    ) {
        let result = result.map(|answer| {
            let token = Token {
                access_token: answer.access_token,
                not_before: answer.not_before,
                expires_on: answer.expires_on,
                obtained_us: now_us,
            };
            self.cache.insert(identity, resource, token);
        });
        self.jobs.finish(
            identity,
            resource,
            result,
            now_us,
            crate::limits::FETCH_FAILURE_HOLD_US,
        );
    }
}
