//! [`Secret`]: bytes that must not leak (tokens, key material in transit).

use core::fmt;
use zeroize::Zeroize;

/// Bytes that must not leak: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default)]
pub struct Secret<const N: usize> {
    bytes: heapless::Vec<u8, N>,
}

impl<const N: usize> Secret<N> {
    /// An empty secret.
    pub fn new() -> Self {
        Secret {
            bytes: heapless::Vec::new(),
        }
    }
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The secret as text (tokens are ASCII); empty if it is not UTF-8.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes).unwrap_or("")
    }
    /// The buffer, to fill it.
    pub fn buf_mut(&mut self) -> &mut heapless::Vec<u8, N> {
        &mut self.bytes
    }
    /// How many bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        self.bytes.as_mut_slice().zeroize();
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted {} bytes>)", self.bytes.len())
    }
}
