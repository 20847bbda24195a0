//! Which address this member tells the others to use.
//!
//! The classic stack's worst Swarm bug was a replica registering the service
//! VIP or its ingress address. Here the default (`auto`) asks the kernel which
//! local address it would use to reach the first seed (a UDP `connect`, which
//! sends no packet): on Swarm that is the task's own address on the overlay
//! network it shares with its seeds. Operators can also name a CIDR, an
//! interface or a literal IP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

use ipnet::IpNet;

/// How the advertised address is chosen (`SHOAL_ADVERTISE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertiseSpec {
    /// The local address the kernel picks to reach the first resolvable seed.
    Auto,
    /// The address of a local interface inside this network (`cidr:10.0.9.0/24`).
    Cidr(IpNet),
    /// The first address of this interface (`iface:eth2`).
    Iface(String),
    /// This literal address.
    Ip(IpAddr),
}

impl FromStr for AdvertiseSpec {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "auto, cidr:<network>/<bits> (e.g. cidr:10.0.9.0/24), iface:<name> (e.g. iface:eth2) or an IP address";
        if raw == "auto" {
            return Ok(Self::Auto);
        }
        if let Some(net) = raw.strip_prefix("cidr:") {
            return net
                .parse::<IpNet>()
                .map(|n| Self::Cidr(n.trunc()))
                .map_err(|_| EXPECTED.to_string());
        }
        if let Some(name) = raw.strip_prefix("iface:") {
            if name.is_empty() {
                return Err(EXPECTED.to_string());
            }
            return Ok(Self::Iface(name.to_string()));
        }
        raw.parse::<IpAddr>()
            .map(Self::Ip)
            .map_err(|_| EXPECTED.to_string())
    }
}

/// Why no address could be advertised.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    #[error(
        "SHOAL_ADVERTISE={0}: refusing to advertise an unspecified address; others could not reach it. Set SHOAL_ADVERTISE to auto, cidr:<net>, iface:<name> or this member's own IP"
    )]
    Unspecified(IpAddr),
    #[error(
        "advertising loopback address {addr} while the seeds ({seeds}) are not on loopback: members on other hosts could not reach it. Set SHOAL_ADVERTISE to cidr:<net> or iface:<name>"
    )]
    LoopbackWithRemoteSeeds { addr: IpAddr, seeds: String },
    #[error(
        "no local interface has an address in {0}; interfaces seen: {1}. Check SHOAL_ADVERTISE or the networks attached to this container"
    )]
    NoAddressInCidr(IpNet, String),
    #[error(
        "no interface named {0:?} with an address; interfaces seen: {1}. Check SHOAL_ADVERTISE"
    )]
    NoSuchInterface(String, String),
    #[error(
        "SHOAL_ADVERTISE=auto needs a seed to route to, and none of SHOAL_SEEDS ({0}) resolves; set SHOAL_SEEDS, or SHOAL_ADVERTISE to cidr:<net>, iface:<name> or an IP"
    )]
    NoSeedResolves(String),
    #[error("could not list network interfaces: {0}")]
    Interfaces(std::io::Error),
}

/// One local interface address.
#[derive(Debug, Clone)]
pub struct LocalAddr {
    /// Interface name (`eth0`).
    pub iface: String,
    /// Its address.
    pub ip: IpAddr,
}

/// The addresses of this host's interfaces.
pub fn local_addrs() -> Result<Vec<LocalAddr>, AdvertiseError> {
    let addrs = if_addrs::get_if_addrs().map_err(AdvertiseError::Interfaces)?;
    Ok(addrs
        .into_iter()
        .map(|i| LocalAddr {
            ip: i.ip(),
            iface: i.name,
        })
        .collect())
}

/// Chooses the address to advertise. `seeds` are the resolved seed addresses
/// (in the order given), `interfaces` the local ones.
pub fn choose(
    spec: &AdvertiseSpec,
    seeds: &[SocketAddr],
    interfaces: &[LocalAddr],
) -> Result<IpAddr, AdvertiseError> {
    let seen = || {
        interfaces
            .iter()
            .map(|i| format!("{}={}", i.iface, i.ip))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ip = match spec {
        AdvertiseSpec::Ip(ip) => *ip,
        AdvertiseSpec::Cidr(net) => interfaces
            .iter()
            .find(|i| net.contains(&i.ip))
            .map(|i| i.ip)
            .ok_or_else(|| AdvertiseError::NoAddressInCidr(*net, seen()))?,
        AdvertiseSpec::Iface(name) => interfaces
            .iter()
            .filter(|i| &i.iface == name)
            // Prefer IPv4: overlay networks are IPv4 on Swarm.
            .min_by_key(|i| i.ip.is_ipv6())
            .map(|i| i.ip)
            .ok_or_else(|| AdvertiseError::NoSuchInterface(name.clone(), seen()))?,
        AdvertiseSpec::Auto => match seeds.first() {
            Some(seed) => route_source(*seed)
                .ok_or_else(|| AdvertiseError::NoSeedResolves(seed.to_string()))?,
            // A first member with no seed: its own host is the only peer it
            // can know of; use the first non-loopback IPv4, else loopback.
            None => interfaces
                .iter()
                .map(|i| i.ip)
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        },
    };
    validate(ip, seeds)
}

/// Refuses addresses nobody else could use.
fn validate(ip: IpAddr, seeds: &[SocketAddr]) -> Result<IpAddr, AdvertiseError> {
    if ip.is_unspecified() {
        return Err(AdvertiseError::Unspecified(ip));
    }
    let remote_seeds: Vec<String> = seeds
        .iter()
        .filter(|s| !s.ip().is_loopback())
        .map(|s| s.to_string())
        .collect();
    if ip.is_loopback() && !remote_seeds.is_empty() {
        return Err(AdvertiseError::LoopbackWithRemoteSeeds {
            addr: ip,
            seeds: remote_seeds.join(", "),
        });
    }
    Ok(ip)
}

/// The local address the kernel would use to send to `dest` (no packet is sent).
pub fn route_source(dest: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match dest {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(dest).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    // Connecting to a loopback seed from 127.0.0.1 yields 127.0.0.1 even when
    // the seed is 127.0.3.1; that is right for a local cluster only if this
    // member has no address of its own, which `gossip_bind` takes care of.
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifaces() -> Vec<LocalAddr> {
        [
            ("lo", "127.0.0.1"),
            ("eth0", "10.255.0.9"), // ingress
            ("eth1", "172.18.0.4"), // docker_gwbridge
            ("eth2", "10.0.9.12"),  // msa-network
            ("eth2", "fe80::1"),
        ]
        .into_iter()
        .map(|(n, ip)| LocalAddr {
            iface: n.into(),
            ip: ip.parse().unwrap(),
        })
        .collect()
    }

    #[test]
    fn spec_parses_every_form_and_explains_the_rest() {
        assert_eq!("auto".parse(), Ok(AdvertiseSpec::Auto));
        assert_eq!(
            "cidr:10.0.9.7/24".parse(),
            Ok(AdvertiseSpec::Cidr("10.0.9.0/24".parse().unwrap()))
        );
        assert_eq!(
            "iface:eth2".parse(),
            Ok(AdvertiseSpec::Iface("eth2".into()))
        );
        assert_eq!(
            "10.0.9.3".parse(),
            Ok(AdvertiseSpec::Ip("10.0.9.3".parse().unwrap()))
        );
        let err = "cidr:10.0.9/33".parse::<AdvertiseSpec>().unwrap_err();
        assert!(err.contains("cidr:<network>/<bits>"), "{err}");
        assert!("iface:".parse::<AdvertiseSpec>().is_err());
        assert!("eth2".parse::<AdvertiseSpec>().is_err());
    }

    #[test]
    fn cidr_picks_the_overlay_address_not_ingress() {
        let spec: AdvertiseSpec = "cidr:10.0.9.0/24".parse().unwrap();
        let ip = choose(&spec, &[], &ifaces()).unwrap();
        assert_eq!(ip, "10.0.9.12".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn iface_prefers_ipv4() {
        let ip = choose(&AdvertiseSpec::Iface("eth2".into()), &[], &ifaces()).unwrap();
        assert_eq!(ip, "10.0.9.12".parse::<IpAddr>().unwrap());
        let err = choose(&AdvertiseSpec::Iface("eth9".into()), &[], &ifaces()).unwrap_err();
        assert!(err.to_string().contains("eth2=10.0.9.12"), "{err}");
    }

    #[test]
    fn missing_cidr_lists_what_was_seen() {
        let spec: AdvertiseSpec = "cidr:10.0.7.0/24".parse().unwrap();
        let err = choose(&spec, &[], &ifaces()).unwrap_err().to_string();
        assert!(
            err.contains("10.0.7.0/24") && err.contains("eth0=10.255.0.9"),
            "{err}"
        );
    }

    #[test]
    fn auto_uses_the_route_to_the_seed() {
        // The kernel routes 127.0.0.1 from loopback: the chosen source is loopback.
        let ip = choose(
            &AdvertiseSpec::Auto,
            &["127.0.0.1:7950".parse().unwrap()],
            &ifaces(),
        )
        .unwrap();
        assert!(ip.is_loopback());
    }

    #[test]
    fn unspecified_and_loopback_with_remote_seeds_are_refused() {
        let err = choose(
            &AdvertiseSpec::Ip("0.0.0.0".parse().unwrap()),
            &[],
            &ifaces(),
        )
        .unwrap_err();
        assert!(matches!(err, AdvertiseError::Unspecified(_)));
        let err = choose(
            &AdvertiseSpec::Ip("127.0.0.1".parse().unwrap()),
            &["10.0.9.3:7950".parse().unwrap()],
            &ifaces(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("10.0.9.3:7950"), "{err}");
        // Loopback with loopback seeds is a local cluster: fine.
        choose(
            &AdvertiseSpec::Ip("127.0.1.1".parse().unwrap()),
            &["127.0.1.2:7950".parse().unwrap()],
            &ifaces(),
        )
        .unwrap();
    }
}
