//! Little-endian fields of the structures a VMM hands the guest (PVH start info, pvclock),
//! read from byte slices so the parsers are plain, host-tested code.

/// The little-endian `u32` at `at` (panics past the end: callers check lengths first).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The little-endian `u64` at `at` (panics past the end: callers check lengths first).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}
