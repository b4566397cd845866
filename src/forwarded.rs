//! The forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) the upstream receives:
//! what tokengate knows, extended from a trusted proxy's, never a client's claim. Pure.

use std::net::IpAddr;

use ipnet::IpNet;

/// Peers whose forwarding headers are kept and extended rather than replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`) and single addresses (`127.0.0.2`).
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        list.iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not an address or CIDR like 10.0.0.0/8"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `peer` is one of them (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&peer))
    }
}

/// Headers besides `Forwarded`, `X-Real-IP` and `X-Forwarded-*` in which proxies tell an
/// application the client's address or scheme, and which frameworks read: Rails' `remote_ip`
/// (`Client-IP`), Go's chi `RealIP` (`True-Client-IP`), CDN conventions, ingress-nginx.
const CLIENT_HEADERS: [&str; 10] = [
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
];

/// Whether a request header (lower-case name) is a forwarding header tokengate owns: it is
/// removed from an untrusted peer's request, in either `-` or `_` spelling.
pub fn is_forwarding_header(name: &str) -> bool {
    let same = |a: u8, b: u8| a == b || (a == b'_' && b == b'-');
    let is = |want: &str| {
        name.len() == want.len() && name.bytes().zip(want.bytes()).all(|(a, b)| same(a, b))
    };
    let prefix = "x-forwarded-";
    is("forwarded")
        || is("x-real-ip")
        || (name.len() > prefix.len() && name.bytes().zip(prefix.bytes()).all(|(a, b)| same(a, b)))
        || CLIENT_HEADERS.iter().any(|h| is(h))
}

/// What a trusted peer said, per header, all values in order.
#[derive(Debug, Default, Clone)]
pub struct Received<'a> {
    /// `Forwarded` values.
    pub forwarded: Vec<&'a str>,
    /// `X-Forwarded-For` values.
    pub x_forwarded_for: Vec<&'a str>,
    /// `X-Real-IP`.
    pub x_real_ip: Option<&'a str>,
    /// `X-Forwarded-Proto`.
    pub x_forwarded_proto: Option<&'a str>,
    /// `X-Forwarded-Host`.
    pub x_forwarded_host: Option<&'a str>,
}

/// The forwarding headers to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarding<'a> {
    /// `Forwarded` (RFC 7239).
    pub forwarded: String,
    /// `X-Forwarded-For`.
    pub x_forwarded_for: String,
    /// `X-Real-IP`: the client as the first trusted hop saw it.
    pub x_real_ip: String,
    /// `X-Forwarded-Proto`.
    pub x_forwarded_proto: &'a str,
    /// `X-Forwarded-Host`, when the request named a host.
    pub x_forwarded_host: Option<&'a str>,
}

/// The headers for a request from `peer` over `proto` to `host`; `received` is what a trusted
/// peer sent (empty for an untrusted one, whose headers are not read at all).
pub fn forwarding<'a>(
    peer: IpAddr,
    proto: &'a str,
    host: Option<&'a str>,
    received: &Received<'a>,
) -> Forwarding<'a> {
    let peer_text = peer.to_string();
    // RFC 7239: an IPv6 node is quoted and bracketed.
    let mut element = String::with_capacity(peer_text.len() + host.map_or(0, str::len) + 32);
    element.push_str("for=");
    match peer {
        IpAddr::V4(_) => element.push_str(&peer_text),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(&peer_text);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    Forwarding {
        forwarded: extend(&received.forwarded, element),
        x_forwarded_for: extend(&received.x_forwarded_for, peer_text.clone()),
        x_real_ip: received.x_real_ip.map_or(peer_text, str::to_owned),
        x_forwarded_proto: received.x_forwarded_proto.unwrap_or(proto),
        x_forwarded_host: received.x_forwarded_host.or(host),
    }
}

/// `values` (a trusted chain, trimmed, empty entries dropped) followed by `last`.
fn extend(values: &[&str], last: String) -> String {
    if values.is_empty() {
        return last;
    }
    let mut all =
        String::with_capacity(values.iter().map(|v| v.len() + 2).sum::<usize>() + last.len());
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        all.push_str(value);
        all.push_str(", ");
    }
    all.push_str(&last);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let t =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.2".into(), "fd00::/8".into()])
                .unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("::ffff:127.0.0.2")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("127.0.0.1")));
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
    }

    #[test]
    fn forwarding_headers_are_recognized_in_every_spelling() {
        for name in [
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-forwarded-for",
            "x_forwarded_host",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "client-ip",
            "client_ip",
            "true-client-ip",
            "x-cluster-client-ip",
            "cf-connecting-ip",
            "x-scheme",
            "front_end_https",
        ] {
            assert!(is_forwarding_header(name), "{name}");
        }
        for name in [
            "x-forwarded-",
            "x-forwarded",
            "forwarded-for",
            "x-real-ip2",
            "client-ip2",
            "x-user-ip",
            "host",
        ] {
            assert!(!is_forwarding_header(name), "{name}");
        }
    }

    #[test]
    fn an_untrusted_peer_gets_only_what_tokengate_knows() {
        let f = forwarding(
            ip("127.0.0.1"),
            "http",
            Some("images.example"),
            &Received::default(),
        );
        assert_eq!(
            f,
            Forwarding {
                forwarded: "for=127.0.0.1;proto=http;host=\"images.example\"".into(),
                x_forwarded_for: "127.0.0.1".into(),
                x_real_ip: "127.0.0.1".into(),
                x_forwarded_proto: "http",
                x_forwarded_host: Some("images.example"),
            }
        );
        let v6 = forwarding(ip("::1"), "http", None, &Received::default());
        assert_eq!(v6.forwarded, "for=\"[::1]\";proto=http");
        assert_eq!(v6.x_forwarded_host, None);
    }

    #[test]
    fn a_trusted_peer_is_extended() {
        let received = Received {
            forwarded: vec!["for=10.0.0.1;proto=https;host=app.example"],
            x_forwarded_for: vec!["10.0.0.1", "10.0.0.7 "],
            x_real_ip: Some("10.0.0.1"),
            x_forwarded_proto: Some("https"),
            x_forwarded_host: Some("app.example"),
        };
        let f = forwarding(ip("127.0.0.2"), "http", Some("internal"), &received);
        assert_eq!(
            f.forwarded,
            "for=10.0.0.1;proto=https;host=app.example, for=127.0.0.2;proto=http;host=\"internal\""
        );
        assert_eq!(f.x_forwarded_for, "10.0.0.1, 10.0.0.7, 127.0.0.2");
        assert_eq!(f.x_real_ip, "10.0.0.1");
        assert_eq!(f.x_forwarded_proto, "https");
        assert_eq!(f.x_forwarded_host, Some("app.example"));
    }
}
