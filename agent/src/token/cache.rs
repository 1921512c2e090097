//! The fixed-capacity token cache, keyed by (identity index, resource).

use super::Token;
use crate::limits::{RESOURCE_MAX, TOKEN_CACHE_CAPACITY};

#[derive(Debug, Clone)]
struct Entry {
    identity: u8,
    resource: heapless::String<RESOURCE_MAX>,
    token: Token,
}

/// What an insert did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new entry in a free slot.
    Added,
    /// The entry for the same (identity, resource) was replaced.
    Replaced,
    /// The cache was full: the entry expiring soonest was evicted.
    Evicted,
}

/// Fixed-capacity token cache keyed by (identity, resource).
#[derive(Debug)]
pub struct TokenCache {
    entries: heapless::Vec<Entry, TOKEN_CACHE_CAPACITY>,
    margin_s: u64,
}

impl TokenCache {
    /// `margin_s`: a token with this many seconds (or fewer) left is no longer served.
    pub fn new(margin_s: u32) -> Self {
        TokenCache {
            entries: heapless::Vec::new(),
            margin_s: margin_s as u64,
        }
    }

    /// A token for (identity, resource) that still has more than the margin to live.
    /// `resource` is compared byte for byte: `https://x` and `https://x/` differ.
    pub fn get(&self, identity: u8, resource: &str, now: u64) -> Option<&Token> {
        self.entries
            .iter()
            .find(|e| e.identity == identity && e.resource == resource)
            .map(|e| &e.token)
            .filter(|t| t.expires_on > now.saturating_add(self.margin_s))
    }

    /// The entry for (identity, resource), however little it has left.
    pub fn peek(&self, identity: u8, resource: &str) -> Option<&Token> {
        self.entries
            .iter()
            .find(|e| e.identity == identity && e.resource == resource)
            .map(|e| &e.token)
    }

    /// Store a token. Resources longer than [`RESOURCE_MAX`] are not cached.
    pub fn insert(&mut self, identity: u8, resource: &str, token: Token) -> Insert {
        let Ok(key) = heapless::String::try_from(resource) else {
            return Insert::Added;
        };
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.identity == identity && e.resource == key)
        {
            e.token = token;
            return Insert::Replaced;
        }
        let entry = Entry {
            identity,
            resource: key,
            token,
        };
        match self.entries.push(entry) {
            Ok(()) => Insert::Added,
            Err(entry) => {
                // Full: evict the entry that expires soonest (expired ones first, naturally).
                let victim = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.token.expires_on)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                self.entries[victim] = entry;
                Insert::Evicted
            }
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the cache holds any entry (fresh or not) for (identity, resource).
    pub fn contains(&self, identity: u8, resource: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.identity == identity && e.resource == resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::test_token as tok;

    #[test]
    fn serves_until_margin() {
        let mut c = TokenCache::new(300);
        c.insert(0, "https://r/", tok(10_000));
        assert!(c.get(0, "https://r/", 9_000).is_some());
        assert!(c.get(0, "https://r/", 9_699).is_some());
        assert!(
            c.get(0, "https://r/", 9_700).is_none(),
            "at the margin: mint anew"
        );
        assert!(
            c.get(0, "https://r", 9_000).is_none(),
            "trailing slash is another resource"
        );
        assert!(c.get(1, "https://r/", 9_000).is_none(), "other identity");
        assert_eq!(c.insert(0, "https://r/", tok(20_000)), Insert::Replaced);
        assert_eq!(c.get(0, "https://r/", 9_700).unwrap().expires_on, 20_000);
    }

    #[test]
    fn full_cache_evicts_soonest_expiring() {
        let mut c = TokenCache::new(0);
        for i in 0..TOKEN_CACHE_CAPACITY {
            let r = std::format!("r{i}");
            assert_eq!(c.insert(0, &r, tok(1_000 + i as u64)), Insert::Added);
        }
        assert_eq!(c.len(), TOKEN_CACHE_CAPACITY);
        // r0 expires soonest: it goes.
        assert_eq!(c.insert(1, "new", tok(5_000)), Insert::Evicted);
        assert_eq!(c.len(), TOKEN_CACHE_CAPACITY);
        assert!(!c.contains(0, "r0"));
        assert!(c.contains(0, "r1"));
        assert!(c.get(1, "new", 0).is_some());
    }
}
