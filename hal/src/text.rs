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

    /// A signed number in decimal.
    fn signed(&mut self, n: i64) -> &mut Self {
        if n < 0 {
            self.put("-");
        }
        self.dec(n.unsigned_abs())
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

    /// The end of the line.
    fn end(&mut self) -> &mut Self {
        self.put("\n")
    }
}

impl<W: Write + ?Sized> Text for W {}

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
        }
        for n in [0i64, -1, 42, i64::MIN, i64::MAX] {
            assert_eq!(text(|s| s.signed(n)), format!("{n}"));
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
}
