//! Address ranges for per-key allowlists: `"192.0.2.0/24"`, `"2001:db8::/32"`, or a single
//! address. An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack listener
//! reports for an IPv4 client) is matched as the IPv4 address it carries.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;

/// Most ranges one key may list (each is a comparison per request).
pub const MAX_RANGES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address, host bits cleared.
    net: IpAddr,
    len: u8,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

impl Cidr {
    /// Reads `addr/len` or a bare address (a /32 or /128). Host bits set below the
    /// prefix are refused: `10.0.0.1/8` is more likely a typo than a wish.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an address range: write e.g. \"192.0.2.0/24\", \"2001:db8::/32\" or one address");
        let (addr, len) = match text.trim().split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text.trim(), None),
        };
        let ip = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            // `08` or `+8` parse as 8: refuse any spelling but the plain one.
            Some(written) => match written.parse::<u8>() {
                Ok(len) if len <= max && len.to_string() == written => len,
                _ => return Err(bad()),
            },
        };
        let net = masked(ip, len);
        if net != ip {
            return Err(format!("{text:?} has bits set after the prefix: did you mean \"{net}/{len}\"?"));
        }
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.net.is_ipv4() && masked(ip, self.len) == self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A client address as Envoy gives it: `ip`, `ip:port`, `[ip]:port` or `[ip]`.
pub fn parse_address(address: &str) -> Option<IpAddr> {
    let a = address.trim();
    a.parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| a.strip_prefix('[').and_then(|a| a.strip_suffix(']')).and_then(|a| a.parse::<IpAddr>().ok()))
}

/// Whether `address` (as Envoy gives it) falls in one of `ranges`. An address that cannot
/// be read matches nothing: an allowlist fails closed.
pub fn allows(ranges: &[Cidr], address: Option<&str>) -> bool {
    address.and_then(parse_address).is_some_and(|ip| ranges.iter().any(|r| r.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let r = Cidr::parse("192.0.2.0/24").unwrap();
        assert!(r.contains(ip("192.0.2.0")) && r.contains(ip("192.0.2.255")));
        assert!(!r.contains(ip("192.0.3.0")));
        assert!(r.contains(ip("::ffff:192.0.2.7")), "a mapped IPv4 client is its IPv4 address");
        assert!(!r.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("192.0.2.1")));
        let one = Cidr::parse("203.0.113.9").unwrap();
        assert_eq!(one.to_string(), "203.0.113.9/32");
        assert!(one.contains(ip("203.0.113.9")) && !one.contains(ip("203.0.113.8")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn malformed_ranges_are_refused_with_a_hint() {
        for bad in
            ["", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/08", "::/129", "10.0.0/8", "x/8", "10.0.0.0/", "10.0.0.0/8/8"]
        {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("\"10.0.0.0/8\""));
    }

    #[test]
    fn addresses_in_envoys_spellings() {
        let r = [Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("::1/128").unwrap()];
        for a in ["127.0.0.1", "127.0.0.1:5555", "[::1]:80", "[::1]", "::1", " 127.9.9.9 "] {
            assert!(allows(&r, Some(a)), "{a}");
        }
        for a in ["10.0.0.1:1", "garbage", "", "[::2]:1"] {
            assert!(!allows(&r, Some(a)), "{a}");
        }
        assert!(!allows(&r, None));
        assert!(!allows(&[], Some("127.0.0.1")));
    }

    #[test]
    fn serde_is_the_written_form() {
        let r: Vec<Cidr> = serde_json::from_str(r#"["10.0.0.0/8","2001:db8::/32"]"#).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"["10.0.0.0/8","2001:db8::/32"]"#);
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["10.0.0.1/8"]"#).is_err());
    }
}
