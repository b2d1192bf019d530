//! Capabilities granted to a processor, denied unless granted: literal environment variables,
//! secrets (host environment variables handed over at run time) and outbound HTTP to an
//! allowlist of hosts. They are configured under `processors.overrides.NAME` as `env`,
//! `secrets` and `http`; this module owns their schema, their checks, and the rules that
//! decide whether one request may leave: [`HttpGrant::allows`] (the allowlist) and
//! [`is_public`] (the SSRF rule). Sending the request is the sandbox's job.
//!
//! **Allowlist entries** are `host`, `host:port` or `*.suffix`, optionally with a scheme
//! (`https://api.example.com`). Without a scheme both `http` and `https` match; without a
//! port only the scheme's default port (80 or 443) does. `*.example.com` matches names
//! under `example.com`, not `example.com` itself. Host names compare case-insensitively.
//!
//! **SSRF.** A name on the list may still resolve to an address inside the network jobhost
//! runs in (loopback, private, link-local: the cloud metadata service lives at
//! 169.254.169.254). Such addresses are refused unless the list names that address itself
//! as an IP literal (`127.0.0.1:8080`, `[::1]`), so granting a public name never grants a
//! way into the local network, whatever its DNS says. The sandbox connects to the very
//! address it checked, so a second lookup cannot swap it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::units::{ByteSize, HumanDuration};

/// Variables every run gets from the host itself; a grant may not replace them.
pub const JOB_VARIABLES: [&str; 3] = ["JOB_ID", "JOB_ATTEMPT", "JOB_POOL"];

/// What one processor is granted beyond computing. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub env: BTreeMap<String, String>,
    /// Names of host environment variables; their values are read when a run starts and
    /// never kept anywhere else.
    pub secrets: Vec<String>,
    pub http: Option<HttpGrant>,
}

impl Grants {
    /// The grants on one line, secrets by name: `env GREETING secrets API_TOKEN http
    /// api.example.com,*.corp`, or `-` for none.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.env.is_empty() {
            parts.push(format!("env {}", self.env.keys().cloned().collect::<Vec<_>>().join(",")));
        }
        if !self.secrets.is_empty() {
            parts.push(format!("secrets {}", self.secrets.join(",")));
        }
        if let Some(http) = &self.http {
            parts.push(format!("http {}", http.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")));
        }
        if parts.is_empty() { "-".to_string() } else { parts.join(" ") }
    }
}

/// Outbound HTTP(S) through `wasi:http/outgoing-handler`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    pub allow: Vec<AllowedHost>,
    /// Per request, from connecting to the last byte of the response.
    #[serde(default = "HttpGrant::default_timeout")]
    pub timeout: HumanDuration,
    /// Largest response body a request may read.
    #[serde(default = "HttpGrant::default_max_response")]
    pub max_response: ByteSize,
    /// Requests one run may make.
    #[serde(default = "HttpGrant::default_max_requests")]
    pub max_requests: u32,
}

impl HttpGrant {
    fn default_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }

    fn default_max_response() -> ByteSize {
        ByteSize(4 << 20)
    }

    fn default_max_requests() -> u32 {
        100
    }

    /// The entry that lets a request to `scheme://host:port` through, if any.
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> Option<&AllowedHost> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allow.iter().find(|entry| entry.matches(scheme, &host, port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// One allowlist entry, as written in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    written: String,
    scheme: Option<Scheme>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Name(String),
    /// `*.suffix`: stored as `.suffix`.
    Under(String),
    Address(IpAddr),
}

impl AllowedHost {
    fn matches(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme.is_some_and(|allowed| allowed != scheme) {
            return false;
        }
        let port_matches = match self.port {
            Some(allowed) => allowed == port,
            None => port == scheme.default_port(),
        };
        port_matches
            && match &self.host {
                HostPattern::Name(name) => name == host,
                HostPattern::Under(suffix) => host.ends_with(suffix.as_str()) && host.len() > suffix.len(),
                HostPattern::Address(address) => host.parse::<IpAddr>().is_ok_and(|ip| ip == *address),
            }
    }

    /// Whether this entry names `address` itself, which is what lets a request reach an
    /// address that is not public.
    pub fn names_address(&self, address: IpAddr) -> bool {
        matches!(self.host, HostPattern::Address(allowed) if canonical(allowed) == canonical(address))
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl FromStr for AllowedHost {
    type Err = String;

    fn from_str(written: &str) -> Result<AllowedHost, String> {
        let fail = |why: &str| {
            format!(
                "{written:?} {why}; an entry is host, host:port or *.suffix, optionally with http:// or \
                 https://, e.g. \"https://api.example.com\" or \"127.0.0.1:8080\""
            )
        };
        let (scheme, rest) = match written.split_once("://") {
            Some(("http", rest)) => (Some(Scheme::Http), rest),
            Some(("https", rest)) => (Some(Scheme::Https), rest),
            Some(_) => return Err(fail("has a scheme other than http or https")),
            None => (None, written),
        };
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(fail("is not just a host (no paths, queries, user names or spaces)"));
        }
        let (host, port) = split_port(rest).map_err(fail)?;
        let host = host.to_ascii_lowercase();
        let pattern = if let Ok(address) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            if address.is_ipv6() && !host.starts_with('[') {
                return Err(fail("has an IPv6 address without brackets"));
            }
            HostPattern::Address(address)
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_host_name(suffix) {
                return Err(fail("has an invalid name after \"*.\""));
            }
            HostPattern::Under(format!(".{suffix}"))
        } else if is_host_name(&host) {
            HostPattern::Name(host)
        } else {
            return Err(fail("is not a valid host name"));
        };
        Ok(AllowedHost { written: written.to_string(), scheme, host: pattern, port })
    }
}

impl<'de> Deserialize<'de> for AllowedHost {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = String::deserialize(deserializer)?;
        written.parse().map_err(serde::de::Error::custom)
    }
}

/// `host[:port]`, where an IPv6 host is in brackets.
fn split_port(rest: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = match rest.rfind(':') {
        Some(colon) if !rest.ends_with(']') && (rest.starts_with('[') || rest.matches(':').count() == 1) => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return Err("has no host");
    }
    match port {
        None => Ok((host, None)),
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok((host, Some(port))),
            _ => Err("has a port that is not a number from 1 to 65535"),
        },
    }
}

fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An IPv4 address carried inside an IPv6 one is judged as that IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => address,
        },
        v4 => v4,
    }
}

/// Whether `address` is on the public internet: not loopback, private, link-local, shared
/// (carrier NAT), multicast, reserved, documentation, benchmarking or unspecified. An IPv4
/// address inside a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address is judged as
/// itself; the IPv6 forms that carry or reach IPv4 without saying which network they
/// translate into (IPv4-mapped, -compatible and -translated, local-use NAT64, Teredo) are
/// refused whole: no public name needs one, and an allow entry naming the address still
/// reaches it.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && v4.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19)))
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    let embedded_v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded_v4(segments[1], segments[2]));
    }
    let in_prefix = |prefix: [u16; 8], length: u32| {
        let mask = u128::MAX.checked_shl(128 - length).unwrap_or(0);
        u128::from(v6) & mask == u128::from(Ipv6Addr::from(prefix))
    };
    !(v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || v6.is_unique_local()
        || v6.is_unicast_link_local()
        // IPv4-compatible ::/96 and IPv4-mapped ::ffff:0:0/96.
        || v6.to_ipv4().is_some()
        || in_prefix([0, 0, 0, 0, 0xffff, 0, 0, 0], 96) // IPv4-translated
        || in_prefix([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48) // NAT64 local use
        || in_prefix([0x100, 0, 0, 0, 0, 0, 0, 0], 64) // discard only
        || in_prefix([0x2001, 0, 0, 0, 0, 0, 0, 0], 32) // Teredo
        || in_prefix([0x2001, 2, 0, 0, 0, 0, 0, 0], 48) // benchmarking
        || in_prefix([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28) // ORCHID
        || in_prefix([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28) // ORCHIDv2
        || in_prefix([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32) // documentation
        || in_prefix([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20) // documentation
        || in_prefix([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10)) // site-local (deprecated)
}

/// Checks `env` and `secrets` of `processors.overrides.NAME` (`key`): names that WASI can
/// carry, that do not replace the job's own variables, and that are given once.
pub fn validate(key: &str, env: &BTreeMap<String, String>, secrets: &[String]) -> Result<(), String> {
    for (name, value) in env {
        check_variable_name(&format!("{key}.env"), name)?;
        if value.contains('\0') {
            return Err(format!("{key}.env.{name} contains a NUL character, which no environment can carry"));
        }
    }
    for (i, name) in secrets.iter().enumerate() {
        check_variable_name(&format!("{key}.secrets"), name)?;
        if env.contains_key(name) {
            return Err(format!("{key}: {name} is both in env and in secrets; keep one"));
        }
        if secrets[..i].contains(name) {
            return Err(format!("{key}.secrets lists {name} twice"));
        }
    }
    Ok(())
}

fn check_variable_name(key: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(format!(
            "{key}: {name:?} is not a variable name; use letters, digits and _, not starting with a digit"
        ));
    }
    if JOB_VARIABLES.contains(&name) {
        return Err(format!("{key}: {name} is set by jobhost for every run and cannot be granted"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(allow: &[&str]) -> HttpGrant {
        HttpGrant {
            allow: allow.iter().map(|entry| entry.parse().unwrap()).collect(),
            timeout: HttpGrant::default_timeout(),
            max_response: HttpGrant::default_max_response(),
            max_requests: 1,
        }
    }

    #[test]
    fn entries_match_scheme_host_and_port_as_written() {
        let grant = grant(&["https://api.example.com", "*.example.org", "127.0.0.1:8080", "[::1]:9000"]);
        let allowed = |scheme, host: &str, port| grant.allows(scheme, host, port).is_some();
        assert!(allowed(Scheme::Https, "api.example.com", 443));
        assert!(allowed(Scheme::Https, "API.Example.COM", 443));
        assert!(!allowed(Scheme::Http, "api.example.com", 80), "the entry names https only");
        assert!(!allowed(Scheme::Https, "api.example.com", 8443), "only the default port without one");
        assert!(!allowed(Scheme::Https, "evil-api.example.com", 443));
        assert!(allowed(Scheme::Http, "a.b.example.org", 80));
        assert!(allowed(Scheme::Https, "a.example.org", 443));
        assert!(!allowed(Scheme::Https, "example.org", 443), "*.suffix is below the suffix");
        assert!(!allowed(Scheme::Https, "badexample.org", 443));
        assert!(allowed(Scheme::Http, "127.0.0.1", 8080));
        assert!(!allowed(Scheme::Http, "127.0.0.1", 8081));
        assert!(allowed(Scheme::Http, "[::1]", 9000));
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_and_the_form() {
        for bad in ["ftp://x.com", "x.com/path", "user@x.com", "x.com:0", "x.com:99999", "*.", "::1", "a..b", ""] {
            let err = bad.parse::<AllowedHost>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")) && err.contains("host:port"), "{err}");
        }
    }

    #[test]
    fn only_public_addresses_are_public() {
        // One address in every refused range, at its edges where a neighbour is public.
        for private in [
            "0.0.0.0", // this network, 0.0.0.0/8
            "0.255.255.255",
            "10.1.2.3",   // private
            "100.64.0.1", // shared (carrier NAT), 100.64.0.0/10
            "100.127.255.255",
            "127.0.0.1",       // loopback
            "169.254.169.254", // link-local: cloud metadata
            "172.16.0.1",      // private
            "192.0.0.1",       // IETF protocol assignments, 192.0.0.0/24
            "192.0.0.255",
            "192.0.2.1",   // documentation
            "192.168.1.1", // private
            "198.18.0.1",  // benchmarking, 198.18.0.0/15
            "198.19.255.255",
            "198.51.100.1",     // documentation
            "203.0.113.1",      // documentation
            "224.0.0.1",        // multicast
            "240.0.0.1",        // reserved, 240.0.0.0/4
            "255.255.255.255",  // broadcast
            "::",               // unspecified
            "::1",              // loopback
            "::7f00:1",         // IPv4-compatible
            "::ffff:127.0.0.1", // IPv4-mapped, ::ffff:0:0/96
            "::ffff:169.254.169.254",
            "::ffff:8.8.8.8", // mapped, even of a public address
            "::ffff:0:a00:1", // IPv4-translated, ::ffff:0:0:0/96
            "::ffff:0:808:808",
            "64:ff9b::a9fe:a9fe", // NAT64 of a link-local address
            "64:ff9b:1::808:808", // NAT64 local use, 64:ff9b:1::/48
            "64:ff9b:1:ffff::1",
            "100::1", // discard only, 100::/64
            "100::ffff:ffff:ffff:ffff",
            "2001::1", // Teredo, 2001::/32
            "2001:0:ffff::1",
            "2001:2::1",  // benchmarking, 2001:2::/48
            "2001:10::1", // ORCHID, 2001:10::/28
            "2001:1f:ffff::1",
            "2001:20::1", // ORCHIDv2, 2001:20::/28
            "2001:2f:ffff::1",
            "2001:db8::1",      // documentation, 2001:db8::/32
            "2002:7f00:1::",    // 6to4 of a loopback address
            "2002:c0a8:101::1", // 6to4 of a private address
            "3fff::1",          // documentation, 3fff::/20
            "3fff:fff::1",
            "fc00::1", // unique local
            "fd00::1",
            "fe80::1", // link-local
            "fec0::1", // site-local, fec0::/10
            "feff:ffff::1",
            "ff02::1", // multicast
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "1.0.0.1",        // past 0.0.0.0/8
            "100.63.255.255", // before 100.64.0.0/10
            "100.128.0.1",    // past it
            "192.0.1.1",      // past 192.0.0.0/24
            "198.17.255.255", // before 198.18.0.0/15
            "198.20.0.1",     // past it
            "2606:4700:4700::1111",
            "2001:4860:4860::8888", // in 2001::/16 but outside every refused range
            "2001:1::1",            // past Teredo
            "2001:3::1",            // past benchmarking
            "2001:30::1",           // past ORCHIDv2
            "2001:db9::1",          // past documentation
            "2002:808:808::1",      // 6to4 of a public address
            "64:ff9b::808:808",     // NAT64 of a public address
            "64:ff9b:2::1",         // past NAT64 local use
            "101::1",               // past discard only
            "3fff:1000::1",         // past 3fff::/20
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn only_an_address_entry_names_an_address() {
        let grant = grant(&["127.0.0.1:8080", "localhost:8080"]);
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(grant.allow[0].names_address(loopback));
        assert!(grant.allow[0].names_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!grant.allow[1].names_address(loopback), "a name never vouches for what it resolves to");
    }

    #[test]
    fn variables_must_be_names_and_leave_the_job_variables_alone() {
        let env = BTreeMap::from([("GREETING".to_string(), "hi".to_string())]);
        assert!(validate("k", &env, &["API_TOKEN".to_string()]).is_ok());
        let job_id = BTreeMap::from([("JOB_ID".to_string(), "x".to_string())]);
        assert!(validate("k", &job_id, &[]).unwrap_err().contains("set by jobhost"));
        assert!(validate("k", &BTreeMap::new(), &["A=B".to_string()]).unwrap_err().contains("not a variable name"));
        assert!(validate("k", &env, &["GREETING".to_string()]).unwrap_err().contains("both in env and in secrets"));
        let twice = ["T".to_string(), "T".to_string()];
        assert!(validate("k", &BTreeMap::new(), &twice).unwrap_err().contains("twice"));
    }
}
