//! H5's trusted peers (`--check-trusted-sources`): whose check header is a gateway's request
//! for a check. Any other peer's header is removed and its request goes on as an ordinary
//! one, so no client can turn a slow moment of the app into checks that count.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The peers whose check header is a gateway's request.
#[derive(Clone, Debug)]
pub struct Trusted(Arc<[IpNet]>);

impl Trusted {
    pub fn new(networks: &[String]) -> Trusted {
        Trusted(
            networks
                .iter()
                .filter_map(|n| crate::setting::parse_network(n))
                .collect(),
        )
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// A peer given as text (an ASGI server's `client`); one that is not an address (a Unix
    /// socket's path, none at all) is not trusted.
    pub fn contains_text(&self, peer: Option<&str>) -> bool {
        peer.and_then(|p| p.parse().ok())
            .is_some_and(|ip| self.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h5_trusted_sources_match_networks_and_mapped_addresses() {
        let trusted = Trusted::new(&["127.0.0.0/8".into(), "::1/128".into()]);
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:127.0.0.2".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(!trusted.contains("10.0.0.1".parse().unwrap()));
        assert!(!Trusted::new(&[]).contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains_text(Some("127.0.0.1")));
        assert!(!trusted.contains_text(Some("/run/app.sock")));
        assert!(!trusted.contains_text(None));
    }
}
