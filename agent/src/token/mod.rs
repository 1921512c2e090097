//! Tokens: the fixed-size [`cache`] and the [`issuer`] that mints self-signed ES256 JWTs.
//!
//! The cache never knows HTTP: it maps (identity index, resource) to a token and its times.
//! A cached token is served while it has more than the refresh margin to live; otherwise the
//! caller obtains a fresh one (mint, or an upstream fetch) and inserts it. When the cache
//! is full, the entry that expires soonest is evicted.

pub mod cache;
pub mod issuer;
pub mod source;

pub use cache::{Insert, TokenCache};
pub use issuer::{Issuer, MintError};
pub use source::{Need, Obtained, TokenError, TokenSource};

use crate::limits::TOKEN_MAX;
use crate::secret::Secret;

/// An access token with its times (Unix seconds).
#[derive(Debug, Clone)]
pub struct Token {
    /// The token itself.
    pub access_token: Secret<TOKEN_MAX>,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
    /// Expiry, Unix seconds.
    pub expires_on: u64,
    /// Monotonic time the agent obtained it (broker mode: `bypass_cache` needs a newer one).
    pub obtained_us: u64,
}

impl Token {
    /// Seconds left at `now` (0 when expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.expires_on.saturating_sub(now)
    }
}

/// A token with the text `tok` that expires at `expires_on` (for tests).
#[cfg(test)]
pub(crate) fn test_token(expires_on: u64) -> Token {
    test_token_at(expires_on, 0)
}

/// [`test_token`] obtained at the monotonic time `obtained_us`.
#[cfg(test)]
pub(crate) fn test_token_at(expires_on: u64, obtained_us: u64) -> Token {
    let mut t = Token {
        access_token: Secret::new(),
        not_before: 0,
        expires_on,
        obtained_us,
    };
    t.access_token.buf_mut().extend_from_slice(b"tok").unwrap();
    t
}

/// An identity for tests (user-assigned).
#[cfg(test)]
pub(crate) fn test_identity() -> crate::config::IdentityConfig {
    crate::config::IdentityConfig {
        kind: crate::config::IdentityKind::User,
        client_id: "12222222-2222-2222-2222-222222222222".try_into().unwrap(),
        object_id: "22222222-2222-2222-2222-222222222222".try_into().unwrap(),
        resource_id: "/subscriptions/s/x".try_into().unwrap(),
        #[cfg(feature = "broker")]
        credential: None,
    }
}

/// An entropy source that always fails, for tests.
#[cfg(test)]
pub(crate) struct NoEntropy;

#[cfg(test)]
impl imds_hal::Entropy for NoEntropy {
    fn fill(&mut self, _: &mut [u8]) -> Result<(), imds_hal::EntropyError> {
        Err(imds_hal::EntropyError::Unavailable)
    }
}

/// A deterministic entropy source for tests: 1, 2, 3, ...
#[cfg(test)]
pub(crate) struct CountingEntropy(pub(crate) u8);

#[cfg(test)]
impl imds_hal::Entropy for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), imds_hal::EntropyError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let t = test_token(1);
        assert!(!std::format!("{t:?}").contains("tok\""));
        assert!(std::format!("{:?}", t.access_token).contains("redacted"));
    }
}
