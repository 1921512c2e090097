//! The kernel command line's `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` entries (Linux's
//! `virtio_mmio` module parameter): how Firecracker announces its virtio-mmio devices
//! (`virtio_mmio.device=4K@0xc0001000:5`) and what QEMU `microvm` writes with
//! `auto-kernel-cmdline=on` (`virtio_mmio.device=512@0xfeb00e00:12`). Sizes and addresses use
//! Linux's `memparse` syntax (decimal or `0x` hex, optional `K`/`M`/`G` suffix).

/// The parameter's name, with its `=`.
const KEY: &[u8] = b"virtio_mmio.device=";

/// One virtio-mmio device announced on the command line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical address of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Linux `memparse`: a number (decimal, or hex after `0x`) with an optional binary suffix;
/// the value and the rest of the input.
fn memparse(s: &[u8]) -> Option<(u64, &[u8])> {
    let (radix, mut rest) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest),
        _ => (10, s),
    };
    let (mut v, mut any) = (0u64, false);
    while let Some(&c) = rest.first() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' if radix == 16 => c - b'a' + 10,
            b'A'..=b'F' if radix == 16 => c - b'A' + 10,
            _ => break,
        };
        v = v.checked_mul(radix)?.checked_add(u64::from(d))?;
        any = true;
        rest = &rest[1..];
    }
    let shift = match rest.first() {
        Some(b'K' | b'k') => 10,
        Some(b'M' | b'm') => 20,
        Some(b'G' | b'g') => 30,
        _ => 0,
    };
    if shift > 0 {
        rest = &rest[1..];
    }
    any.then_some(())?;
    Some((v.checked_mul(1 << shift)?, rest))
}

/// Parse one value `<size>@<base>:<irq>[:<id>]` (the whole word).
fn parse_device(word: &[u8]) -> Option<MmioDevice> {
    let (size, rest) = memparse(word)?;
    let rest = rest.strip_prefix(b"@")?;
    let (base, rest) = memparse(rest)?;
    let rest = rest.strip_prefix(b":")?;
    let (irq, rest) = memparse(rest)?;
    if !(rest.is_empty() || rest.starts_with(b":")) || size == 0 {
        return None;
    }
    Some(MmioDevice {
        base,
        size,
        irq: u32::try_from(irq).ok()?,
    })
}

/// The `virtio_mmio.device=` entries of `cmdline` (up to a NUL, words separated by spaces),
/// in order; malformed entries are skipped.
pub fn virtio_mmio_devices(cmdline: &[u8]) -> impl Iterator<Item = MmioDevice> + '_ {
    let end = cmdline
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(cmdline.len());
    cmdline[..end]
        .split(|c| c.is_ascii_whitespace())
        .filter_map(|word| parse_device(word.strip_prefix(KEY)?))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn all(cmdline: &str) -> Vec<(u64, u64, u32)> {
        virtio_mmio_devices(cmdline.as_bytes())
            .map(|d| (d.base, d.size, d.irq))
            .collect()
    }

    #[test]
    fn firecracker_entries() {
        assert_eq!(
            all("console=ttyS0 reboot=k panic=1 virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"),
            [(0xc000_1000, 4096, 5), (0xc000_2000, 4096, 6)]
        );
    }

    #[test]
    fn microvm_entries_and_an_id() {
        assert_eq!(
            all(" virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=1K@4272947200:13:7\0junk virtio_mmio.device=4K@0x1:1"),
            [(0xfeb0_0e00, 512, 12), (0xfeb0_0000, 1024, 13)]
        );
    }

    #[test]
    fn suffixes() {
        assert_eq!(memparse(b"2M@"), Some((2 << 20, &b"@"[..])));
        assert_eq!(memparse(b"1g"), Some((1 << 30, &b""[..])));
        assert_eq!(memparse(b"0x10k"), Some((16 << 10, &b""[..])));
        assert_eq!(memparse(b"x"), None);
        assert_eq!(memparse(b"0x"), None);
        assert_eq!(memparse(b"99999999999999999999"), None);
    }

    #[test]
    fn malformed_entries_are_skipped() {
        assert!(all("virtio_mmio.device= virtio_mmio.device=4K virtio_mmio.device=4K@0xc0001000 virtio_mmio.device=0@0x1000:5 virtio_mmio.device=4K@0xc0001000:5x xvirtio_mmio.device=4K@0x1000:5 virtio_mmio.device=4K@0x1000:0x100000000").is_empty());
        assert!(all("").is_empty());
    }
}
