//! Where tokens come from: the [`TokenCache`], the [`Issuer`] (minted now) and, in broker
//! mode (cargo feature `broker`), fetches from the authority (the job table the broker tasks
//! work through).

use super::{Issuer, MintError, Token, TokenCache};
#[cfg(feature = "broker")]
use crate::broker::{upstream::TokenAnswer, FetchError, JobState, Jobs};
use crate::config::IdentityConfig;
use crate::guard::Refusal;
#[cfg(feature = "broker")]
use crate::limits::MIN_REFRESH_INTERVAL_US;
use imds_hal::Entropy;

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

    /// The token cache.
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

/// What a request asks of [`TokenSource::obtain`] besides the identity and resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// `bypass_cache=true`: only a token obtained for this request will do.
    pub bypass: bool,
    /// Since when the request waits for a fetch (broker mode), if it does.
    pub parked_since_us: Option<u64>,
}

/// Why no token can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Issuer mode without a signing key (cannot happen with a validated config).
    NoTokenSource,
    /// Minting failed.
    Mint(MintError),
    /// The guard refused the cost (a mint or a new fetch) to the source.
    Refused(Refusal),
    /// The fetch failed (held for [`crate::limits::FETCH_FAILURE_HOLD_US`]).
    #[cfg(feature = "broker")]
    Fetch(FetchError),
    /// The job table is full.
    #[cfg(feature = "broker")]
    FetchesFull,
}

/// What [`TokenSource::obtain`] gives.
#[derive(Debug)]
pub enum Obtained<'a> {
    /// The token to answer with.
    Ready(&'a Token),
    /// A fetch is queued or running: ask again (the router parks the request).
    Pending,
    /// No token.
    Failed(TokenError),
}

impl TokenSource {
    /// A token of `identity` (index `index`) for `resource` at wall time `now_s` and monotonic
    /// time `now_us`, by the rules of the mode:
    ///
    /// * issuer: the cached token while it has more than the refresh margin to live (not with
    ///   `bypass`), else a new one, minted (and cached) if `charge` lets the source pay for it;
    /// * broker: the cached token while it has more than the margin to live, renewed in the
    ///   background once it has less than twice the margin and is at least
    ///   [`MIN_REFRESH_INTERVAL_US`] old; inside the margin, still the cached token while its
    ///   renewal runs or its failure is held; a token fetched while the request waited is its
    ///   answer however short-lived (and the only answer to `bypass`); a failure is held and
    ///   answered to everyone but a new `bypass` request; otherwise a new fetch if `charge`
    ///   lets the source pay for it: [`Obtained::Pending`].
    #[allow(clippy::too_many_arguments)]
    pub fn obtain<E: Entropy>(
        &mut self,
        identity: &IdentityConfig,
        index: u8,
        resource: &str,
        need: Need,
        now_s: u64,
        now_us: u64,
        entropy: &mut E,
        charge: impl FnOnce() -> Result<(), Refusal>,
    ) -> Obtained<'_> {
        #[cfg(feature = "broker")]
        if self.broker {
            return self.obtain_fetched(index, resource, need, now_s, now_us, charge);
        }
        let _ = now_us;
        self.obtain_minted(identity, index, resource, need, now_s, entropy, charge)
    }

    #[allow(clippy::too_many_arguments)]
    fn obtain_minted<E: Entropy>(
        &mut self,
        identity: &IdentityConfig,
        index: u8,
        resource: &str,
        need: Need,
        now_s: u64,
        entropy: &mut E,
        charge: impl FnOnce() -> Result<(), Refusal>,
    ) -> Obtained<'_> {
        if need.bypass || self.cache.get(index, resource, now_s).is_none() {
            let Some(issuer) = self.issuer.as_ref() else {
                return Obtained::Failed(TokenError::NoTokenSource);
            };
            // Minting costs: charge it to the source.
            if let Err(r) = charge() {
                return Obtained::Failed(TokenError::Refused(r));
            }
            match issuer.mint(identity, resource, now_s, entropy) {
                Ok(token) => {
                    self.cache.insert(index, resource, token);
                }
                Err(e) => return Obtained::Failed(TokenError::Mint(e)),
            }
        }
        match self.cache.peek(index, resource) {
            Some(t) => Obtained::Ready(t),
            None => Obtained::Failed(TokenError::NoTokenSource),
        }
    }

    #[cfg(feature = "broker")]
    fn obtain_fetched(
        &mut self,
        index: u8,
        resource: &str,
        need: Need,
        now_s: u64,
        now_us: u64,
        charge: impl FnOnce() -> Result<(), Refusal>,
    ) -> Obtained<'_> {
        let margin = self.refresh_margin_s;
        // A token fetched while this request waited is its answer, however short-lived.
        let new_for_me = |t: &Token| {
            need.parked_since_us
                .is_some_and(|since| t.obtained_us >= since)
        };
        // bypass_cache: only a token obtained after this request arrived will do.
        if let Some(t) = self
            .cache
            .peek(index, resource)
            .filter(|t| !need.bypass || new_for_me(t))
        {
            let left = t.expires_on.saturating_sub(now_s);
            if left > margin || (new_for_me(t) && left > 0) {
                let age_us = now_us.saturating_sub(t.obtained_us);
                if left <= 2 * margin && age_us >= MIN_REFRESH_INTERVAL_US {
                    // Refresh ahead, nobody waits for it. A full job table just means later.
                    let _ = self.jobs.enqueue(index, resource, true, now_us);
                }
                return Obtained::Ready(t);
            }
            if left > 0 && self.jobs.get(index, resource).is_some() {
                // Inside the margin, but a renewal is running or just failed: the known token
                // is better than an error.
                let _ = self.jobs.enqueue(index, resource, true, now_us);
                return Obtained::Ready(t);
            }
        }
        self.jobs.expire(now_us);
        match self.jobs.get(index, resource).map(|j| j.state) {
            Some(JobState::Failed { error, .. })
                if need.parked_since_us.is_some() || !need.bypass =>
            {
                Obtained::Failed(TokenError::Fetch(error))
            }
            Some(JobState::Queued | JobState::InFlight) => Obtained::Pending,
            _ => match charge() {
                Err(refusal) => Obtained::Failed(TokenError::Refused(refusal)),
                Ok(()) => match self.jobs.enqueue(index, resource, false, now_us) {
                    Ok(()) => Obtained::Pending,
                    Err(_) => Obtained::Failed(TokenError::FetchesFull),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_hal::EntropyError;

    const MARGIN: u32 = 300;
    const R: &str = "https://r/";

    use crate::token::CountingEntropy as Counter;
    use crate::token::{test_identity as identity, test_token_at as token, NoEntropy};

    /// What a case expects: the token's expiry, waiting, or an error.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Ready { expires_on: u64 },
        Pending,
        Failed(TokenError),
    }

    fn outcome(o: Obtained<'_>) -> Expect {
        match o {
            Obtained::Ready(t) => Expect::Ready {
                expires_on: t.expires_on,
            },
            Obtained::Pending => Expect::Pending,
            Obtained::Failed(e) => Expect::Failed(e),
        }
    }

    const TOO_MANY: Refusal = Refusal::TooMany { retry_after_s: 1 };

    /// Issuer mode: (rule, cached token expiry, need, now, charge, issuer, entropy, expected,
    /// charged). A minted token lives 3600 s.
    #[test]
    fn issuer_rules() {
        type Case = (
            &'static str,
            Option<u64>,
            Need,
            u64,
            Result<(), Refusal>,
            bool,
            bool,
            Expect,
            bool,
        );
        let bypass = Need {
            bypass: true,
            parked_since_us: None,
        };
        #[rustfmt::skip]
        let cases: [Case; 7] = [
            ("cached while more than the margin is left", Some(10_000), Need::default(), 9_699, Ok(()), true, true, Expect::Ready { expires_on: 10_000 }, false),
            ("at the margin: minted anew", Some(10_000), Need::default(), 9_700, Ok(()), true, true, Expect::Ready { expires_on: 9_700 + 3600 }, true),
            ("nothing cached: minted", None, Need::default(), 100, Ok(()), true, true, Expect::Ready { expires_on: 3700 }, true),
            ("bypass: minted although cached", Some(10_000), bypass, 100, Ok(()), true, true, Expect::Ready { expires_on: 3700 }, true),
            ("the source cannot pay for a mint", None, Need::default(), 100, Err(TOO_MANY), true, true, Expect::Failed(TokenError::Refused(TOO_MANY)), true),
            ("no issuer", None, Need::default(), 100, Ok(()), false, true, Expect::Failed(TokenError::NoTokenSource), false),
            ("no entropy", None, Need::default(), 100, Ok(()), true, false, Expect::Failed(TokenError::Mint(MintError::Entropy(EntropyError::Unavailable))), true),
        ];
        for (rule, cached, need, now_s, charge, has_issuer, entropy, expect, charged) in cases {
            let issuer = has_issuer.then(|| {
                let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
                Issuer::new(key, "https://i/", "t", 3600)
            });
            let mut src = TokenSource::new(issuer, MARGIN, false);
            if let Some(e) = cached {
                src.cache.insert(0, R, token(e, 0));
            }
            let mut was_charged = false;
            let pay = || {
                was_charged = true;
                charge
            };
            let got = if entropy {
                outcome(src.obtain(&identity(), 0, R, need, now_s, 0, &mut Counter(0), pay))
            } else {
                outcome(src.obtain(&identity(), 0, R, need, now_s, 0, &mut NoEntropy, pay))
            };
            assert_eq!(got, expect, "{rule}");
            assert_eq!(was_charged, charged, "{rule}: charged");
        }
    }

    /// Broker mode: (rule, cached token (expiry, obtained at), job before, need, now (s, us),
    /// charge, expected, job after (state, background)). Margin 300 s, minimum refresh
    /// interval 30 s.
    #[cfg(feature = "broker")]
    #[test]
    fn broker_rules() {
        use crate::broker::JobState;
        #[derive(Clone, Copy)]
        enum Job {
            None,
            Running,
            Failed(FetchError),
            Full,
        }
        type Case = (
            &'static str,
            Option<(u64, u64)>,
            Job,
            Need,
            (u64, u64),
            Result<(), Refusal>,
            Expect,
            Option<(JobState, bool)>,
        );
        const MIN: u64 = MIN_REFRESH_INTERVAL_US;
        const DOWN: FetchError = FetchError::Unreachable;
        let plain = Need::default();
        let bypass = Need {
            bypass: true,
            parked_since_us: None,
        };
        let parked = |since| Need {
            bypass: false,
            parked_since_us: Some(since),
        };
        let queued = |background| Some((JobState::Queued, background));
        #[rustfmt::skip]
        let cases: [Case; 13] = [
            ("fresh: served", Some((10_000, 0)), Job::None, plain, (9_000, MIN), Ok(()), Expect::Ready { expires_on: 10_000 }, None),
            ("under twice the margin: served, renewed ahead", Some((10_000, 0)), Job::None, plain, (9_400, MIN), Ok(()), Expect::Ready { expires_on: 10_000 }, queued(true)),
            ("renewed ahead at most every 30 s", Some((10_000, 0)), Job::None, plain, (9_400, MIN - 1), Ok(()), Expect::Ready { expires_on: 10_000 }, None),
            ("inside the margin: a fetch to wait for", Some((10_000, 0)), Job::None, plain, (9_800, MIN), Ok(()), Expect::Pending, queued(false)),
            ("inside the margin while a renewal runs: the known token", Some((10_000, 0)), Job::Running, plain, (9_800, MIN), Ok(()), Expect::Ready { expires_on: 10_000 }, Some((JobState::InFlight, false))),
            ("a failure is held and answered", None, Job::Failed(DOWN), plain, (9_800, 1), Ok(()), Expect::Failed(TokenError::Fetch(DOWN)), Some((JobState::Failed { error: DOWN, until_us: crate::limits::FETCH_FAILURE_HOLD_US }, false))),
            ("after the hold: a new fetch", None, Job::Failed(DOWN), plain, (9_800, crate::limits::FETCH_FAILURE_HOLD_US + 1), Ok(()), Expect::Pending, queued(false)),
            ("a parked request gets the held failure too", None, Job::Failed(DOWN), parked(0), (9_800, 1), Ok(()), Expect::Failed(TokenError::Fetch(DOWN)), Some((JobState::Failed { error: DOWN, until_us: crate::limits::FETCH_FAILURE_HOLD_US }, false))),
            ("a token fetched while parked is the answer, however short", Some((9_900, 5)), Job::None, parked(5), (9_800, MIN), Ok(()), Expect::Ready { expires_on: 9_900 }, None),
            ("bypass: an older token will not do", Some((10_000, 0)), Job::None, bypass, (9_000, MIN), Ok(()), Expect::Pending, queued(false)),
            ("the source cannot pay for a fetch", None, Job::None, plain, (100, MIN), Err(TOO_MANY), Expect::Failed(TokenError::Refused(TOO_MANY)), None),
            ("the job table is full", None, Job::Full, plain, (100, MIN), Ok(()), Expect::Failed(TokenError::FetchesFull), None),
            ("expired: a fetch to wait for", Some((100, 0)), Job::None, plain, (100, MIN), Ok(()), Expect::Pending, queued(false)),
        ];
        for (rule, cached, job, need, (now_s, now_us), charge, expect, after) in cases {
            let mut src = TokenSource::new(None, MARGIN, true);
            if let Some((e, at)) = cached {
                src.cache.insert(0, R, token(e, at));
            }
            match job {
                Job::None => {}
                Job::Running => {
                    src.jobs.enqueue(0, R, false, 0).unwrap();
                    src.jobs.start_next().unwrap();
                }
                Job::Failed(e) => {
                    src.jobs.enqueue(0, R, false, 0).unwrap();
                    src.jobs.start_next().unwrap();
                    src.finish_fetch(0, R, Err(e), 0);
                }
                Job::Full => {
                    for i in 0..crate::limits::MAX_PENDING_FETCHES {
                        src.jobs
                            .enqueue(1, &std::format!("other{i}"), false, 0)
                            .unwrap();
                    }
                }
            }
            let got = outcome(src.obtain(
                &identity(),
                0,
                R,
                need,
                now_s,
                now_us,
                &mut Counter(0),
                || charge,
            ));
            assert_eq!(got, expect, "{rule}");
            let job_after = src.jobs.get(0, R).map(|j| (j.state, j.background));
            assert_eq!(job_after, after, "{rule}: job");
        }
    }
}
