//! Who may ask, and how often: the source allow-list, the `Host` check against DNS rebinding,
//! and the per-source limit on requests that cost (a mint or an upstream fetch).
//!
//! Azure's IMDS allows about 20 requests/s and 5 in flight per VM on the token endpoint and
//! answers 429 beyond that; imds-agent applies the same figures per source address, to the
//! work that costs only: answers from the cache are cheap and never throttled.

use crate::limits::{HOST_NAME_MAX, MAX_ALLOW_HOSTS, MAX_ALLOW_RULES, MAX_RATE_SOURCES};
use core::net::{IpAddr, Ipv4Addr};

/// Default costly requests per second per source (Azure's figure).
pub const DEFAULT_RATE_PER_S: u32 = 20;
/// Default requests per source waiting for an upstream fetch at once (Azure's figure).
pub const DEFAULT_IN_FLIGHT: u32 = 5;

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address (host bits are ignored).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl Cidr {
    /// The block `addr/prefix_len`.
    pub const fn new(addr: IpAddr, prefix_len: u8) -> Cidr {
        Cidr { addr, prefix_len }
    }

    /// Parse `A.B.C.D/N`, `X::Y/N` (host daemon only), or a bare address (a single host).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        // The unikernel has no IPv6 (no rule of that kind can match there): it parses IPv4
        // blocks only, which keeps core's IPv6 parser (~1 KB) out of the image.
        #[cfg(feature = "std")]
        let addr: IpAddr = a.parse().ok()?;
        #[cfg(not(feature = "std"))]
        let addr = IpAddr::V4(parse_ipv4(a)?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = len.unwrap_or(max);
        (prefix_len <= max).then_some(Cidr { addr, prefix_len })
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 peers (dual-stack sockets) compare as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - self.prefix_len as u32)
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - self.prefix_len as u32)
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Loopback and link-local: always in the default allow-list.
pub const DEFAULT_ALLOW: [Cidr; 4] = [
    Cidr::new(IpAddr::V4(core::net::Ipv4Addr::new(127, 0, 0, 0)), 8),
    Cidr::new(IpAddr::V4(core::net::Ipv4Addr::new(169, 254, 0, 0)), 16),
    Cidr::new(IpAddr::V6(core::net::Ipv6Addr::LOCALHOST), 128),
    Cidr::new(
        IpAddr::V6(core::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        10,
    ),
];

#[derive(Debug, Clone, Copy)]
struct Source {
    ip: IpAddr,
    /// Token bucket, in millionths of a request.
    credit: u64,
    last_us: u64,
    in_flight: u32,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the source is not in the allow-list.
    SourceNotAllowed,
    /// 403: the `Host` header names a host the config does not list.
    HostNotAllowed,
    /// 429: too many costly requests; retry after this many seconds.
    TooMany {
        /// Seconds until the source may try again.
        retry_after_s: u32,
    },
}

/// The allow-lists and the per-source limits.
#[derive(Debug, Clone)]
pub struct Guard {
    allow: heapless::Vec<Cidr, MAX_ALLOW_RULES>,
    /// Whether `allow` was configured (then it replaces the defaults and own subnets).
    explicit: bool,
    allow_hosts: heapless::Vec<heapless::String<HOST_NAME_MAX>, MAX_ALLOW_HOSTS>,
    rate_per_s: u32,
    in_flight_max: u32,
    sources: heapless::Vec<Source, MAX_RATE_SOURCES>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(None, &[], DEFAULT_RATE_PER_S, DEFAULT_IN_FLIGHT)
    }
}

impl Guard {
    /// `allow`: the configured list (`None`: the defaults plus the agent's own subnets).
    pub fn new(
        allow: Option<&[Cidr]>,
        allow_hosts: &[heapless::String<HOST_NAME_MAX>],
        rate_per_s: u32,
        in_flight_max: u32,
    ) -> Guard {
        let mut list = heapless::Vec::new();
        match allow {
            Some(rules) => {
                for r in rules.iter().take(MAX_ALLOW_RULES) {
                    let _ = list.push(*r);
                }
            }
            None => {
                for r in DEFAULT_ALLOW {
                    let _ = list.push(r);
                }
            }
        }
        let mut hosts = heapless::Vec::new();
        for h in allow_hosts.iter().take(MAX_ALLOW_HOSTS) {
            let _ = hosts.push(h.clone());
        }
        Guard {
            allow: list,
            explicit: allow.is_some(),
            allow_hosts: hosts,
            rate_per_s,
            in_flight_max,
            sources: heapless::Vec::new(),
        }
    }

    /// The agent's own subnet (an interface address): allowed unless `allow` was configured.
    pub fn add_own_subnet(&mut self, subnet: Cidr) {
        if !self.explicit && !self.allow.contains(&subnet) {
            let _ = self.allow.push(subnet);
        }
    }

    /// The agent's own subnet changed from `old` to `new` (an interface got another address,
    /// or lost it): `old` leaves the allow-list (unless it is one of [`DEFAULT_ALLOW`]), `new`
    /// joins it. Nothing changes when `allow` was configured.
    pub fn replace_own_subnet(&mut self, old: Option<Cidr>, new: Option<Cidr>) {
        if self.explicit {
            return;
        }
        if let Some(old) = old.filter(|o| Some(*o) != new && !DEFAULT_ALLOW.contains(o)) {
            self.allow.retain(|c| *c != old);
        }
        if let Some(new) = new {
            self.add_own_subnet(new);
        }
    }

    /// Whether `ip` may ask for tokens.
    pub fn source_allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }

    /// A `Host` header is fine when absent, an IP literal, `localhost`, or listed.
    pub fn host_allowed(&self, host: Option<&[u8]>) -> bool {
        let Some(host) = host else { return true };
        let Ok(host) = core::str::from_utf8(crate::http::trim(host)) else {
            return false;
        };
        if host.is_empty() {
            return true;
        }
        // Strip the port; an IPv6 literal is bracketed.
        let name = if let Some(rest) = host.strip_prefix('[') {
            match rest.split_once(']') {
                Some((v6, _)) => return ipv6_literal(v6),
                None => return false,
            }
        } else {
            // By byte: `:` is ASCII (never inside a multi-byte character), and core's reverse
            // `char` search is ~450 bytes of the image.
            match host.bytes().rposition(|b| b == b':') {
                Some(i) => &host[..i],
                None => host,
            }
        };
        parse_ipv4(name).is_some()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    }

    fn source(&mut self, ip: IpAddr, now_us: u64) -> &mut Source {
        let cap = self.rate_per_s as u64 * 1_000_000;
        if let Some(i) = self.sources.iter().position(|s| s.ip == ip) {
            return &mut self.sources[i];
        }
        let fresh = Source {
            ip,
            credit: cap,
            last_us: now_us,
            in_flight: 0,
        };
        if self.sources.is_full() {
            // Full table: reuse the entry of the source that asked longest ago and has
            // nothing in flight (its bucket would be full again by now anyway).
            let victim = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.in_flight == 0)
                .min_by_key(|(_, s)| s.last_us)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.sources[victim] = fresh;
            return &mut self.sources[victim];
        }
        let _ = self.sources.push(fresh);
        let last = self.sources.len() - 1;
        &mut self.sources[last]
    }

    /// Charge one costly request (a mint or a new fetch) to `ip`.
    pub fn charge(&mut self, ip: IpAddr, now_us: u64) -> Result<(), Refusal> {
        let rate = self.rate_per_s as u64;
        if rate == 0 {
            return Ok(());
        }
        let cap = rate * 1_000_000;
        let s = self.source(ip, now_us);
        let elapsed = now_us.saturating_sub(s.last_us);
        s.credit = (s.credit + elapsed.saturating_mul(rate)).min(cap);
        s.last_us = now_us;
        if s.credit >= 1_000_000 {
            s.credit -= 1_000_000;
            Ok(())
        } else {
            let missing = 1_000_000 - s.credit;
            let wait_us = missing.div_ceil(rate);
            Err(Refusal::TooMany {
                retry_after_s: wait_us.div_ceil(1_000_000).max(1) as u32,
            })
        }
    }

    /// A request of `ip` starts waiting for a fetch.
    pub fn park(&mut self, ip: IpAddr, now_us: u64) -> Result<(), Refusal> {
        let max = self.in_flight_max;
        let s = self.source(ip, now_us);
        if max != 0 && s.in_flight >= max {
            return Err(Refusal::TooMany { retry_after_s: 1 });
        }
        s.in_flight += 1;
        Ok(())
    }

    /// A request of `ip` stopped waiting (answered, or its connection went away).
    pub fn unpark(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.ip == ip) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

/// Whether the text inside a `Host: [...]` is an IPv6 literal: hex digits, `:` (at least one)
/// and `.` (an IPv4 tail). What the check guards against is a *name* (DNS rebinding), which
/// never looks like that; by bytes, because core's IPv6 parser is ~1 KB of the image.
fn ipv6_literal(s: &str) -> bool {
    s.bytes().any(|b| b == b':')
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// `A.B.C.D`, exactly as core's `Ipv4Addr::from_str` reads it: four decimal octets of one to
/// three digits, no leading zero (but `0` itself), each at most 255. The image parses its
/// config's addresses with this: core's parser is ~900 B of code there, this ~150.
pub fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut rest = s.as_bytes();
    for (i, octet) in octets.iter_mut().enumerate() {
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, after) = rest.split_at(len);
        if len == 0 || len > 3 || (len > 1 && digits[0] == b'0') {
            return None;
        }
        let value = digits
            .iter()
            .fold(0u16, |v, &d| v * 10 + u16::from(d - b'0'));
        *octet = u8::try_from(value).ok()?;
        rest = match (i, after) {
            (3, []) => after,
            (0..=2, [b'.', next @ ..]) => next,
            _ => return None,
        };
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser agrees with core's on every string of digits, dots and a few others.
    #[test]
    fn ipv4_like_core() {
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.2.15",
            "1.2.3.4",
            "256.1.1.1",
            "1.2.3.256",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.0",
            "1.2.3",
            "1.2.3.4.",
            ".1.2.3.4",
            "1..2.3",
            "1.2.3.4.5",
            "",
            "....",
            "+1.2.3.4",
            "1.2.3.-4",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1000.1.1.1",
            "0001.1.1.1",
            "1.2.3.4/24",
            "١.2.3.4",
            "999.999.999.999",
        ] {
            assert_eq!(parse_ipv4(s), s.parse::<Ipv4Addr>().ok(), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_like_core_any(s in "[0-9.+a -]{0,20}") {
            proptest::prop_assert_eq!(parse_ipv4(&s), s.parse::<Ipv4Addr>().ok());
        }

        #[test]
        fn ipv4_like_core_addresses(a: [u8; 4], zero in 0usize..5, extra in "[0-9.]{0,2}") {
            let mut s = Ipv4Addr::from(a).to_string();
            if zero < 4 {
                // A leading zero in one octet.
                let at = s.split('.').take(zero).map(|p| p.len() + 1).sum::<usize>();
                s.insert(at, '0');
            }
            s.push_str(&extra);
            proptest::prop_assert_eq!(parse_ipv4(&s), s.parse::<Ipv4Addr>().ok());
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix_len, 32);
        assert!(Cidr::parse("1.2.3.4/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
    }

    #[test]
    fn default_allow_and_own_subnet() {
        let mut g = Guard::default();
        assert!(g.source_allowed(ip("127.0.0.1")));
        assert!(g.source_allowed(ip("169.254.1.2")));
        assert!(!g.source_allowed(ip("10.0.2.15")));
        g.add_own_subnet(Cidr::parse("10.0.2.0/24").unwrap());
        assert!(g.source_allowed(ip("10.0.2.15")));
        let mut explicit = Guard::new(Some(&[Cidr::parse("192.168.0.0/16").unwrap()]), &[], 20, 5);
        explicit.add_own_subnet(Cidr::parse("10.0.2.0/24").unwrap());
        assert!(
            !explicit.source_allowed(ip("10.0.2.15")),
            "explicit list replaces defaults"
        );
        assert!(!explicit.source_allowed(ip("127.0.0.1")));
        assert!(explicit.source_allowed(ip("192.168.3.4")));
    }

    #[test]
    fn own_subnet_is_replaced_not_accumulated() {
        let net = |s| Cidr::parse(s).unwrap();
        let mut g = Guard::default();
        let rules = g.allow.len();
        g.replace_own_subnet(None, Some(net("10.0.2.15/24")));
        assert!(g.source_allowed(ip("10.0.2.9")));
        // A new DHCP lease on another subnet: the old one goes.
        g.replace_own_subnet(Some(net("10.0.2.15/24")), Some(net("192.168.7.20/24")));
        assert!(!g.source_allowed(ip("10.0.2.9")));
        assert!(g.source_allowed(ip("192.168.7.1")));
        assert_eq!(g.allow.len(), rules + 1);
        // The same address again changes nothing; a lost lease removes it.
        g.replace_own_subnet(Some(net("192.168.7.20/24")), Some(net("192.168.7.20/24")));
        assert!(g.source_allowed(ip("192.168.7.1")));
        g.replace_own_subnet(Some(net("192.168.7.20/24")), None);
        assert!(!g.source_allowed(ip("192.168.7.1")));
        assert_eq!(g.allow.len(), rules);
        // A link-local address never takes the default link-local rule with it.
        g.replace_own_subnet(None, Some(net("169.254.0.0/16")));
        g.replace_own_subnet(Some(net("169.254.0.0/16")), None);
        assert!(g.source_allowed(ip("169.254.1.2")));
        // An explicit allow-list is left alone.
        let mut explicit = Guard::new(Some(&[net("192.168.0.0/16")]), &[], 20, 5);
        explicit.replace_own_subnet(Some(net("192.168.0.0/16")), Some(net("10.0.2.0/24")));
        assert!(explicit.source_allowed(ip("192.168.3.4")));
        assert!(!explicit.source_allowed(ip("10.0.2.15")));
    }

    #[test]
    fn host_header_rules() {
        let g = Guard::new(
            None,
            &[heapless::String::try_from("imds.internal").unwrap()],
            20,
            5,
        );
        for ok in [
            None,
            Some(&b"169.254.169.254"[..]),
            Some(b"127.0.0.1:8080"),
            Some(b"localhost:50342"),
            Some(b"[::1]:80"),
            Some(b"[fe80::1]"),
            Some(b"[::ffff:169.254.169.254]:80"),
            Some(b"IMDS.internal"),
        ] {
            assert!(g.host_allowed(ok), "{ok:?}");
        }
        for bad in [
            &b"evil.example"[..],
            b"evil.example:80",
            b"169.254.169.254.nip.io",
            b"[nope]",
            b"[]",
            b"[evil.example]",
            b"[::1",
        ] {
            assert!(!g.host_allowed(Some(bad)), "{bad:?}");
        }
    }

    #[test]
    fn token_bucket() {
        let mut g = Guard::new(None, &[], 20, 5);
        let a = ip("127.0.0.1");
        for _ in 0..20 {
            g.charge(a, 0).unwrap();
        }
        assert_eq!(g.charge(a, 0), Err(Refusal::TooMany { retry_after_s: 1 }));
        assert!(g.charge(ip("127.0.0.2"), 0).is_ok(), "per source");
        // 50 ms later one more request's worth has accrued.
        g.charge(a, 50_000).unwrap();
        assert!(g.charge(a, 50_000).is_err());
        // Disabled.
        let mut off = Guard::new(None, &[], 0, 0);
        for _ in 0..1000 {
            off.charge(a, 0).unwrap();
            off.park(a, 0).unwrap();
        }
    }

    #[test]
    fn in_flight_and_full_table() {
        let mut g = Guard::new(None, &[], 20, 2);
        let a = ip("127.0.0.1");
        g.park(a, 0).unwrap();
        g.park(a, 0).unwrap();
        assert!(g.park(a, 0).is_err());
        g.unpark(a);
        g.park(a, 0).unwrap();
        // More sources than the table holds: the oldest idle one is reused, none panics.
        for i in 0..(MAX_RATE_SOURCES as u32 + 10) {
            let ip = IpAddr::V4(core::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.charge(ip, i as u64).unwrap();
        }
        assert!(
            g.park(a, 0).is_err(),
            "a source with requests in flight is kept"
        );
    }
}
