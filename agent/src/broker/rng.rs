//! The entropy source as a `rand_core` RNG, for the TLS key exchange and for signing client
//! assertions.

use core::cell::Cell;
use imds_hal::Entropy;

/// Entropy as a `rand_core` RNG for the TLS key exchange. A failing source poisons the
/// handshake: the flag is checked before anything secret is sent.
pub struct Rng<'e, E: Entropy> {
    /// The entropy source.
    pub entropy: &'e mut E,
    /// Set when the source failed (the handshake or signature must not be used).
    pub failed: &'e Cell<bool>,
}

impl<E: Entropy> rand_core::RngCore for Rng<'_, E> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.entropy.fill(dest).is_err() && self.entropy.fill(dest).is_err() {
            self.failed.set(true);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        if self.failed.get() {
            Err(rand_core::Error::from(core::num::NonZeroU32::MIN))
        } else {
            Ok(())
        }
    }
}

impl<E: Entropy> rand_core::CryptoRng for Rng<'_, E> {}
