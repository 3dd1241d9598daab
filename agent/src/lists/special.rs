//! Special-purpose addresses: [`special_purpose`] says whether an address
//! is in a block of the IANA IPv4 or IPv6 Special-Purpose Address Registry
//! (or is multicast, broadcast, or IPv6 outside global unicast), and names
//! the block. Mail for a friend
//! never goes to such an address unless `allow_non_public_next_hops` is set.
//!
//! Every block of the registries counts, even the few marked "globally
//! reachable" (anycast services such as AS112 and TURN): none of them is a
//! friend's mail server. The tables follow the registries as of 2024-10
//! (iana-ipv4-special-registry, iana-ipv6-special-registry). No maintained
//! crate carries them (std's `is_global` is unstable), so they are here.
//! Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 blocks: (address, prefix length, name).
const V4: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([10, 0, 0, 0], 8, "private-use (10.0.0.0/8)"),
    ([100, 64, 0, 0], 10, "shared address space (100.64.0.0/10)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
    ([172, 16, 0, 0], 12, "private-use (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 31, 196, 0], 24, "AS112 (192.31.196.0/24)"),
    ([192, 52, 193, 0], 24, "AMT (192.52.193.0/24)"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private-use (192.168.0.0/16)"),
    (
        [192, 175, 48, 0],
        24,
        "AS112 direct delegation (192.175.48.0/24)",
    ),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
];

/// IPv6 blocks: (address, prefix length, name). IPv4-mapped addresses are
/// judged by the IPv4 address inside.
const V6: &[([u16; 8], u8, &str)] = &[
    (
        [0, 0, 0, 0, 0, 0, 0, 0],
        96,
        "unspecified, loopback or IPv4-compatible (::/96)",
    ),
    (
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4/IPv6 translation (64:ff9b::/96)",
    ),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "local-use IPv4/IPv6 translation (64:ff9b:1::/48)",
    ),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only (100::/64)"),
    (
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "dummy prefix (100:0:0:1::/64)",
    ),
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments (2001::/23)",
    ),
    (
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation (2001:db8::/32)",
    ),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 (2002::/16)"),
    (
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "AS112 direct delegation (2620:4f:8000::/48)",
    ),
    (
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "documentation (3fff::/20)",
    ),
    (
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (5f00::/16)",
    ),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local (fc00::/7)"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local (fe80::/10)"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast (ff00::/8)"),
];

/// The special-purpose block `ip` is in, if any.
pub(crate) fn special_purpose(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(&v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: &Ipv4Addr) -> Option<&'static str> {
    if ip.is_broadcast() {
        return Some("limited broadcast (255.255.255.255/32)");
    }
    let a = u32::from(*ip);
    V4.iter().find_map(|(net, len, name)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
        (a & mask == u32::from(Ipv4Addr::from(*net)) & mask).then_some(*name)
    })
}

fn special_v6(ip: &Ipv6Addr) -> Option<&'static str> {
    let a = u128::from(*ip);
    let found = V6.iter().find_map(|(net, len, name)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
        (a & mask == u128::from(Ipv6Addr::from(*net)) & mask).then_some(*name)
    });
    // Outside 2000::/3 nothing is assigned for global unicast (fec0::/10,
    // the old site-local, say).
    found.or_else(|| {
        (ip.segments()[0] & 0xe000 != 0x2000).then_some("outside global unicast (2000::/3)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special(s: &str) -> Option<&'static str> {
        special_purpose(&s.parse().unwrap())
    }

    #[test]
    fn every_special_block_of_the_registries_is_caught() {
        for ip in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.9",
            "192.0.0.170",
            "192.0.2.7",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.1.1",
            "192.175.48.1",
            "198.18.0.1",
            "198.19.255.254",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "::",
            "::1",
            "::7f00:1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::1.2.3.4",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:1ff:ffff::1",
            "2001:db8::1",
            "2002:c000:201::1",
            "2620:4f:8000::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fec0::1",
            "4000::1",
        ] {
            assert!(special(ip).is_some(), "{ip} is special-purpose");
        }
        assert_eq!(
            special("100.64.0.1"),
            Some("shared address space (100.64.0.0/10)")
        );
        assert_eq!(special("2002::1"), Some("6to4 (2002::/16)"));
    }

    #[test]
    fn public_unicast_addresses_are_not_special() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.88.98.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2001:200::1",
            "2001:4860::8888",
            "2a00:1450::1",
            "2620:4f:8001::1",
            "3ffe:ffff::1",
        ] {
            assert_eq!(special(ip), None, "{ip} is public");
        }
    }
}
