//! Log text without `core::fmt`'s formatting machinery.
//!
//! `write!` and `{}` go through `core::fmt::write` and the `Display` impls of integers and
//! addresses: about 50 KB of code in a 150 KB image. The console lines of the agent are plain
//! text with a few numbers and addresses in them, so they are written piece by piece with
//! [`Text`], which every [`core::fmt::Write`] sink has: only its `write_str` is called.
//!
//! ```
//! use imds_hal::text::Text;
//! let mut line = String::new();
//! line.put("address ").ipv4([10, 0, 2, 15]).put("/").dec(24).put(" after ").dec(12).put(" ms").end();
//! assert_eq!(line, "address 10.0.2.15/24 after 12 ms\n");
//! ```

use core::fmt::Write;

/// The decimal digits of `n`, in `buf`; the slice that holds them.
pub fn dec_digits(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    core::str::from_utf8(&buf[i..]).unwrap_or("?")
}

/// Pieces of a log line, written in order. Errors of the sink are ignored: a console that
/// drops a byte must not stop the agent.
pub trait Text: Write {
    /// A string as it is.
    fn put(&mut self, s: &str) -> &mut Self {
        let _ = self.write_str(s);
        self
    }

    /// An unsigned number in decimal.
    fn dec(&mut self, n: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        self.put(dec_digits(n, &mut buf))
    }

    /// An unsigned number in lowercase hexadecimal with a `0x` prefix.
    fn hex(&mut self, n: u64) -> &mut Self {
        let mut buf = [0u8; 18];
        let mut i = buf.len();
        let mut n = n;
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        i -= 2;
        buf[i] = b'0';
        buf[i + 1] = b'x';
        self.put(core::str::from_utf8(&buf[i..]).unwrap_or("?"))
    }

    /// A byte as two lowercase hexadecimal digits (`{:02x}`).
    fn hex2(&mut self, b: u8) -> &mut Self {
        let digits = b"0123456789abcdef";
        let pair = [digits[usize::from(b >> 4)], digits[usize::from(b & 0xf)]];
        self.put(core::str::from_utf8(&pair).unwrap_or("??"))
    }

    /// An IPv4 address in dotted decimal.
    fn ipv4(&mut self, a: [u8; 4]) -> &mut Self {
        for (i, b) in a.iter().enumerate() {
            if i > 0 {
                self.put(".");
            }
            self.dec(u64::from(*b));
        }
        self
    }

    /// An IPv6 address as `core::net::Ipv6Addr`'s `Display` writes it (RFC 5952: lowercase
    /// hex, the longest run of two or more zero groups as `::`, IPv4-mapped as
    /// `::ffff:a.b.c.d`).
    fn ipv6(&mut self, a: core::net::Ipv6Addr) -> &mut Self {
        if let Some(v4) = a.to_ipv4_mapped() {
            return self.put("::ffff:").ipv4(v4.octets());
        }
        let groups = a.segments();
        // The longest run of zero groups (the first of equal ones), if at least two long.
        let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
        for (i, g) in groups.iter().enumerate() {
            if *g == 0 {
                if run_len == 0 {
                    run = i;
                }
                run_len += 1;
                if run_len > best_len {
                    (best, best_len) = (run, run_len);
                }
            } else {
                run_len = 0;
            }
        }
        let hex_group = |out: &mut Self, g: u16| {
            let mut buf = [0u8; 4];
            let mut i = buf.len();
            let mut n = g;
            loop {
                i -= 1;
                buf[i] = b"0123456789abcdef"[usize::from(n & 0xf)];
                n >>= 4;
                if n == 0 {
                    break;
                }
            }
            out.put(core::str::from_utf8(&buf[i..]).unwrap_or("?"));
        };
        if best_len < 2 {
            for (i, g) in groups.iter().enumerate() {
                if i > 0 {
                    self.put(":");
                }
                hex_group(self, *g);
            }
            return self;
        }
        for (i, g) in groups[..best].iter().enumerate() {
            if i > 0 {
                self.put(":");
            }
            hex_group(self, *g);
        }
        self.put("::");
        for (i, g) in groups[best + best_len..].iter().enumerate() {
            if i > 0 {
                self.put(":");
            }
            hex_group(self, *g);
        }
        self
    }

    /// A socket address as `core::net::SocketAddr`'s `Display` writes it (`a.b.c.d:port`,
    /// `[v6]:port`, with `%scope` when it has one).
    fn socket(&mut self, a: core::net::SocketAddr) -> &mut Self {
        match a {
            core::net::SocketAddr::V4(v4) => self.ipv4(v4.ip().octets()),
            core::net::SocketAddr::V6(v6) => {
                self.put("[").ipv6(*v6.ip());
                if v6.scope_id() != 0 {
                    self.put("%").dec(v6.scope_id().into());
                }
                self.put("]")
            }
        };
        self.put(":").dec(a.port().into())
    }

    /// The end of the line.
    fn end(&mut self) -> &mut Self {
        self.put("\n")
    }
}

impl<W: Write + ?Sized> Text for W {}

/// A sink that remembers whether a write failed (e.g. a full `heapless::String`), for text
/// that must be whole or refused: [`Text`] itself ignores errors.
pub struct Checked<'a, W: Write + ?Sized> {
    out: &'a mut W,
    failed: bool,
}

impl<'a, W: Write + ?Sized> Checked<'a, W> {
    /// Write through to `out`.
    pub fn new(out: &'a mut W) -> Self {
        Checked { out, failed: false }
    }

    /// `Err` if any write failed.
    pub fn result(&self) -> core::fmt::Result {
        if self.failed {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

impl<W: Write + ?Sized> Write for Checked<'_, W> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.out.write_str(s).is_err() {
            self.failed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::String;

    fn text(f: impl FnOnce(&mut String) -> &mut String) -> String {
        let mut s = String::new();
        f(&mut s);
        s
    }

    #[test]
    fn numbers_as_format_writes_them() {
        for n in [0u64, 7, 10, 99, 100, 65535, 1 << 32, u64::MAX] {
            assert_eq!(text(|s| s.dec(n)), format!("{n}"));
            assert_eq!(text(|s| s.hex(n)), format!("{n:#x}"));
            assert_eq!(text(|s| s.hex2(n as u8)), format!("{:02x}", n as u8));
        }
    }

    #[test]
    fn addresses_and_lines() {
        for a in [[0, 0, 0, 0], [169, 254, 169, 254], [10, 0, 2, 15], [255; 4]] {
            assert_eq!(
                text(|s| s.ipv4(a)),
                format!("{}", core::net::Ipv4Addr::from(a))
            );
        }
        assert_eq!(text(|s| s.put("a ").dec(1).put(" b").end()), "a 1 b\n");
    }

    #[test]
    fn checked_reports_a_write_that_did_not_fit() {
        let mut small: heapless_like::Small = heapless_like::Small::default();
        let mut c = Checked::new(&mut small);
        c.put("abc");
        assert!(c.result().is_ok());
        c.put("defg");
        assert!(c.result().is_err());
    }

    /// A sink of 5 bytes (hal has no heapless).
    mod heapless_like {
        #[derive(Default)]
        pub struct Small(usize);
        impl core::fmt::Write for Small {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                if self.0 + s.len() > 5 {
                    return Err(core::fmt::Error);
                }
                self.0 += s.len();
                Ok(())
            }
        }
    }

    #[test]
    fn ipv6_as_display_writes_it() {
        use core::net::Ipv6Addr;
        let mut cases: std::vec::Vec<Ipv6Addr> = [
            "::",
            "::1",
            "1::",
            "fe80::1",
            "2001:db8::8:800:200c:417a",
            "2001:db8:0:0:1:0:0:1",
            "2001:0:0:1:0:0:0:1",
            "1:0:1:0:1:0:1:0",
            "::ffff:10.0.2.15",
            "::10.0.2.15",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        // Every pattern of zero / non-zero groups, with varied values.
        for mask in 0u32..256 {
            let mut g = [0u16; 8];
            for (i, x) in g.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *x = (mask as u16).wrapping_mul(0x9e37).wrapping_add(i as u16) | 1;
                }
            }
            cases.push(Ipv6Addr::from(g));
        }
        for a in cases {
            assert_eq!(text(|s| s.ipv6(a)), format!("{a}"));
        }
        for a in [
            "10.0.2.2:443",
            "[::1]:8443",
            "[fe80::1%3]:80",
            "[2001:db8::1]:0",
        ] {
            let a: core::net::SocketAddr = a.parse().unwrap();
            assert_eq!(text(|s| s.socket(a)), format!("{a}"));
        }
    }
}
