//! The PROXY protocol (haproxy's spec, v1 text and v2 binary) on the
//! gateway's ports: an L4 balancer in front of the gateways (haproxy
//! `send-proxy`, AWS NLB, …) sends the client's address ahead of the
//! client's bytes, and the gateway uses it wherever it uses the client's
//! address — per-client rate limits, the access log, `X-Forwarded-For`.
//!
//! Accepted only from `SHOAL_TRUSTED_PROXIES`: a header from anyone else
//! is a client naming its own address, and its connection is closed. With
//! `SHOAL_PROXY_PROTOCOL=true` a trusted peer must send one (a connection
//! without is closed: a misconfigured balancer is seen at once, not as
//! every client having the balancer's address); with `optional` it may.
//! Either way a refused connection is counted by reason
//! (`shoal_gateway_proxy_protocol_refused_total`).
//!
//! The header is read with `peek` until it is whole, then exactly its
//! bytes are taken off the socket: what follows (the request, or a TLS
//! ClientHello) stays for hyper or rustls. Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ProxyProtocol as Mode;

/// The v2 signature, and v1's prefix.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// The largest header taken: v1's is 107 bytes at most; v2's carries
/// TLVs (haproxy's `send-proxy-v2-ssl` adds the TLS details), 4 KiB is
/// far more than any balancer sends.
pub const MAX_HEADER: usize = 4096;

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A peer not in `SHOAL_TRUSTED_PROXIES` sent a header.
    #[error("a PROXY header from a peer not in SHOAL_TRUSTED_PROXIES")]
    Untrusted,
    /// A trusted peer sent none, and `SHOAL_PROXY_PROTOCOL=true` wants one.
    #[error(
        "no PROXY header from a trusted proxy (SHOAL_PROXY_PROTOCOL=true; `optional` accepts both)"
    )]
    Missing,
    /// The header could not be parsed.
    #[error("a malformed PROXY header: {0}")]
    Malformed(String),
    /// The header was not whole within the header timeout.
    #[error("no whole PROXY header within SHOAL_HEADER_TIMEOUT")]
    Timeout,
    /// The socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl Refused {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// A PROXY header (v1 or v2) begins.
    Header,
    /// Anything else: the client's own bytes.
    Other,
    /// Too few bytes to tell.
    Unknown,
}

fn start(bytes: &[u8]) -> Start {
    let matches = |prefix: &[u8]| {
        let n = bytes.len().min(prefix.len());
        bytes[..n] == prefix[..n]
    };
    match (matches(V2_SIGNATURE), matches(V1_PREFIX)) {
        (false, false) => Start::Other,
        (true, _) if bytes.len() >= V2_SIGNATURE.len() => Start::Header,
        (_, true) if bytes.len() >= V1_PREFIX.len() => Start::Header,
        _ => Start::Unknown,
    }
}

/// A whole PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes (what follows is the client's).
    pub len: usize,
    /// The client's address; `None` for v1 `UNKNOWN` and v2 `LOCAL` (a
    /// balancer's own health check: the peer is the client).
    pub client: Option<SocketAddr>,
}

/// The whole header at the start of `bytes`; `Ok(None)` while incomplete.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, Refused> {
    let header = HeaderResult::parse(bytes);
    if header.is_incomplete() {
        return if bytes.len() >= MAX_HEADER {
            Err(Refused::Malformed(format!(
                "longer than {MAX_HEADER} bytes"
            )))
        } else {
            Ok(None)
        };
    }
    let whole = match header {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Header {
                len: h.header.len(),
                client,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            };
            Header {
                len: h.len(),
                client,
            }
        }
        HeaderResult::V1(Err(e)) => return Err(Refused::Malformed(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => return Err(Refused::Malformed(format!("v2: {e}"))),
    };
    Ok(Some(whole))
}

/// The client of a connection from `peer`: the address its PROXY header
/// names, taken off `stream`, or `peer` itself (see the module's rules).
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    mode: Mode,
    trusted: &[ipnet::IpNet],
    timeout: Duration,
) -> Result<SocketAddr, Refused> {
    if mode == Mode::Off {
        return Ok(peer);
    }
    let is_trusted = trusted.iter().any(|net| net.contains(&peer.ip()));
    tokio::time::timeout(timeout, read(stream, peer, mode, is_trusted))
        .await
        .unwrap_or(Err(Refused::Timeout))
}

async fn read(
    stream: &mut TcpStream,
    peer: SocketAddr,
    mode: Mode,
    trusted: bool,
) -> Result<SocketAddr, Refused> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            // Closed before a byte: hyper sees the same.
            return Ok(peer);
        }
        match start(&buf[..n]) {
            Start::Other if trusted && mode == Mode::Required => return Err(Refused::Missing),
            Start::Other => return Ok(peer),
            Start::Header if !trusted => return Err(Refused::Untrusted),
            Start::Header => {
                if let Some(header) = parse(&buf[..n])? {
                    stream.read_exact(&mut buf[..header.len]).await?;
                    return Ok(header.client.unwrap_or(peer));
                }
            }
            Start::Unknown => {}
        }
        // Part of a header (or of something that starts like one): `peek`
        // returns at once while bytes wait, so wait for more a little.
        if n == seen {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_give_the_client_and_their_length() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 4000\r\nGET / HTTP/1.1\r\n";
        let h = parse(v1).unwrap().unwrap();
        assert_eq!(&v1[h.len..h.len + 3], b"GET");
        assert_eq!(h.client, Some("203.0.113.7:51234".parse().unwrap()));
        let header = |len, client: Option<&str>| {
            Some(Header {
                len,
                client: client.map(|c| c.parse().unwrap()),
            })
        };
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 4000\r\n";
        assert_eq!(
            parse(v1).unwrap(),
            header(v1.len(), Some("[2001:db8::7]:51234"))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), header(15, None));

        let addresses: ppp::v2::Addresses = (
            "198.51.100.9:40000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:4000".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        let mut bytes = v2.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&bytes).unwrap(),
            header(v2.len(), Some("198.51.100.9:40000"))
        );
        // LOCAL: the balancer's own health check.
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(parse(&local).unwrap(), header(local.len(), None));
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_are_refused() {
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7").unwrap(), None);
        assert_eq!(parse(&V2_SIGNATURE[..8]).unwrap(), None);
        assert!(matches!(
            parse(b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"),
            Err(Refused::Malformed(_))
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER, b'1');
        assert!(matches!(parse(&long), Err(Refused::Malformed(_))));
    }

    #[test]
    fn the_first_bytes_tell_a_header_from_a_request() {
        assert_eq!(start(b"GET / HTTP/1.1\r\n"), Start::Other);
        assert_eq!(start(b"\x16\x03\x01"), Start::Other);
        assert_eq!(start(b"PRI * HTTP/2.0"), Start::Other);
        assert_eq!(start(b"PRO"), Start::Unknown);
        assert_eq!(start(b"\r\n\r\n"), Start::Unknown);
        assert_eq!(start(b"PROXY TCP4"), Start::Header);
        assert_eq!(start(V2_SIGNATURE), Start::Header);
    }

    /// Over a real socket: a trusted peer's header is taken off and the
    /// request follows; an untrusted one's header closes the connection; a
    /// trusted peer without one is refused when one is required.
    #[tokio::test]
    async fn headers_are_taken_only_from_trusted_peers() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let timeout = Duration::from_secs(2);
        let none: Vec<ipnet::IpNet> = Vec::new();
        // What the peer sends, the mode, who is trusted, the client
        // expected (`peer`: the peer itself; `None`: refused).
        type Case<'a> = (&'a [u8], Mode, &'a Vec<ipnet::IpNet>, Option<&'a str>);
        let cases: [Case; 5] = [
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 5 4000\r\nGET",
                Mode::Required,
                &trusted,
                Some("203.0.113.7:5"),
            ),
            (b"GET", Mode::Optional, &trusted, Some("peer")),
            (b"GET", Mode::Required, &trusted, None),
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 5 4000\r\nGET",
                Mode::Required,
                &none,
                None,
            ),
            (b"GET", Mode::Required, &none, Some("peer")),
        ];
        for (sent, mode, trusted, want) in cases {
            let mut client = TcpStream::connect(addr).await.unwrap();
            // Sent in two parts: the reader waits for the whole header.
            let (a, b) = sent.split_at(sent.len() / 2);
            client.write_all(a).await.unwrap();
            let (mut stream, peer) = listener.accept().await.unwrap();
            let trusted = trusted.clone();
            let accepted = tokio::spawn(async move {
                let r = accept(&mut stream, peer, mode, &trusted, timeout).await;
                let mut rest = [0u8; 3];
                let next = match &r {
                    Ok(_) => stream.read_exact(&mut rest).await.map(|_| rest).ok(),
                    Err(_) => None,
                };
                (r.map(|c| (c, c == peer)), next)
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            // (A refused connection may be closed by now.)
            let _ = client.write_all(b).await;
            let (got, next) = accepted.await.unwrap();
            match want {
                None => assert!(got.is_err(), "{mode:?} {:?}: {got:?}", sent),
                Some("peer") => assert!(got.unwrap().1),
                Some(client) => assert_eq!(got.unwrap().0.to_string(), client),
            }
            if want.is_some() {
                assert_eq!(next, Some(*b"GET"));
            }
        }
    }
}
