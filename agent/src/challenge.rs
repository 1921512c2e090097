//! Azure Arc's key-file challenges (issue 13), sans-IO: the table of outstanding secrets.
//!
//! A token request without a valid `Authorization: Basic <secret>` gets a fresh challenge: a
//! random file name and a random secret ([`Challenges::issue`]). The host daemon writes the
//! secret to `<key_dir>/<name>.key` before the 401 goes out and removes the file when the
//! secret is used, expires ([`ARC_KEY_TTL_US`]) or the daemon stops
//! ([`Challenges::sync`], [`Challenges::clear`]); this module only keeps the table. A secret
//! is good for one request.

use crate::limits::{ARC_CHALLENGES, ARC_KEY_TTL_US};
use crate::secret::Secret;
use imds_hal::Entropy;

/// Random bytes in a key file's name (hex in the name: twice as many characters).
const NAME_BYTES: usize = 16;
/// Random bytes of a secret (hex in the file: twice as many characters).
const SECRET_BYTES: usize = 32;

/// A key file's name without `.key`: lowercase hex.
pub type KeyName = heapless::String<{ 2 * NAME_BYTES }>;

struct Entry {
    name: KeyName,
    secret: Secret<{ 2 * SECRET_BYTES }>,
    created_us: u64,
    /// The daemon wrote the file.
    written: bool,
    /// Used or expired: the file goes, then the entry.
    dead: bool,
}

/// Why no challenge was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    /// [`ARC_CHALLENGES`] secrets are outstanding.
    Full,
    /// The entropy source failed.
    Entropy,
}

/// The outstanding secrets.
#[derive(Default)]
pub struct Challenges {
    entries: heapless::Vec<Entry, ARC_CHALLENGES>,
}

impl core::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Challenges")
            .field("outstanding", &self.entries.len())
            .finish()
    }
}

fn hex<const N: usize>(bytes: &[u8], out: &mut heapless::Vec<u8, N>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        let _ = out.push(DIGITS[(b >> 4) as usize]);
        let _ = out.push(DIGITS[(b & 15) as usize]);
    }
}

/// Equal secrets, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Challenges {
    /// A new challenge: its file name (without `.key`). The daemon writes the file at its
    /// next [`Challenges::sync`], before the answer is sent.
    pub fn issue<E: Entropy>(
        &mut self,
        entropy: &mut E,
        now_us: u64,
    ) -> Result<KeyName, ChallengeError> {
        self.expire(now_us);
        if self.entries.is_full() {
            return Err(ChallengeError::Full);
        }
        let mut raw = [0u8; NAME_BYTES + SECRET_BYTES];
        entropy
            .fill(&mut raw)
            .map_err(|_| ChallengeError::Entropy)?;
        let mut name_bytes: heapless::Vec<u8, { 2 * NAME_BYTES }> = heapless::Vec::new();
        hex(&raw[..NAME_BYTES], &mut name_bytes);
        let mut secret = Secret::new();
        hex(&raw[NAME_BYTES..], secret.buf_mut());
        zeroize::Zeroize::zeroize(&mut raw);
        let mut name = KeyName::new();
        for &b in &name_bytes {
            let _ = name.push(b as char);
        }
        let _ = self.entries.push(Entry {
            name: name.clone(),
            secret,
            created_us: now_us,
            written: false,
            dead: false,
        });
        Ok(name)
    }

    /// Whether `sent` is an outstanding, unexpired secret whose file was written; if so it
    /// is used up.
    pub fn redeem(&mut self, sent: &[u8], now_us: u64) -> bool {
        self.expire(now_us);
        let mut hit = false;
        for e in self.entries.iter_mut() {
            if same(sent, e.secret.as_bytes()) && e.written && !e.dead {
                e.dead = true;
                hit = true;
            }
        }
        hit
    }

    /// How many secrets are outstanding (written or to be written, not yet used).
    pub fn outstanding(&self) -> usize {
        self.entries.iter().filter(|e| !e.dead).count()
    }

    fn expire(&mut self, now_us: u64) {
        for e in self.entries.iter_mut() {
            if now_us.saturating_sub(e.created_us) >= ARC_KEY_TTL_US {
                e.dead = true;
            }
        }
    }

    /// The daemon's turn: `write(name, secret)` the new files (false: it could not, the
    /// challenge is dropped) and `remove(name)` the files of used or expired secrets.
    pub fn sync(
        &mut self,
        now_us: u64,
        mut write: impl FnMut(&str, &[u8]) -> bool,
        mut remove: impl FnMut(&str),
    ) {
        self.expire(now_us);
        for e in self.entries.iter_mut() {
            if !e.dead && !e.written {
                if write(&e.name, e.secret.as_bytes()) {
                    e.written = true;
                } else {
                    e.dead = true;
                }
            }
            if e.dead && e.written {
                remove(&e.name);
                e.written = false;
            }
        }
        self.entries.retain(|e| !e.dead);
    }

    /// Forget every secret and `remove(name)` every file written (at shutdown).
    pub fn clear(&mut self, mut remove: impl FnMut(&str)) {
        for e in self.entries.iter().filter(|e| e.written) {
            remove(&e.name);
        }
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::CountingEntropy;
    use std::string::String;
    use std::vec::Vec;

    #[test]
    fn single_use_expiring_and_removed() {
        let mut c = Challenges::default();
        let mut e = CountingEntropy(0);
        let name = c.issue(&mut e, 0).unwrap();
        assert_eq!(name.len(), 32);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        c.sync(
            1,
            |n, s| {
                files.push((n.into(), s.to_vec()));
                true
            },
            |_| panic!("nothing to remove yet"),
        );
        assert_eq!(files.len(), 1);
        let secret = files[0].1.clone();
        assert_eq!(secret.len(), 64);
        assert!(!c.redeem(b"wrong", 2));
        assert!(c.redeem(&secret, 2));
        // Used up.
        assert!(!c.redeem(&secret, 3));
        let mut removed = Vec::new();
        c.sync(4, |_, _| true, |n| removed.push(String::from(n)));
        assert_eq!(removed, [files[0].0.clone()]);
        assert_eq!(c.outstanding(), 0);

        // Expired: refused, and its file goes.
        let name = c.issue(&mut e, 10).unwrap();
        let mut secret = Vec::new();
        c.sync(
            10,
            |_, s| {
                secret = s.to_vec();
                true
            },
            |_| {},
        );
        assert!(!c.redeem(&secret, 10 + ARC_KEY_TTL_US));
        let mut removed = Vec::new();
        c.sync(
            10 + ARC_KEY_TTL_US,
            |_, _| true,
            |n| removed.push(String::from(n)),
        );
        assert_eq!(removed, [String::from(name.as_str())]);
    }

    #[test]
    fn unwritten_secrets_are_not_accepted_and_full_is_an_error() {
        let mut c = Challenges::default();
        let mut e = CountingEntropy(0);
        for _ in 0..ARC_CHALLENGES {
            c.issue(&mut e, 0).unwrap();
        }
        assert_eq!(c.issue(&mut e, 0), Err(ChallengeError::Full));
        // A failed write drops the challenge; clear removes what was written.
        let mut n = 0;
        c.sync(
            0,
            |_, _| {
                n += 1;
                n % 2 == 0
            },
            |_| {},
        );
        assert_eq!(c.outstanding(), ARC_CHALLENGES / 2);
        let mut removed = 0;
        c.clear(|_| removed += 1);
        assert_eq!(removed, ARC_CHALLENGES / 2);
        assert_eq!(c.outstanding(), 0);
    }
}
