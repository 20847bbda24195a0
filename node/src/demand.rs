//! Rate-limit demand: what each gateway publishes of the traffic it sees for
//! a rate-limited service (`limit:{service}`), so that every gateway can
//! take its share of the service's limit. Only gateways write and read it.

use std::fmt::Write;
use std::net::IpAddr;

/// Prefix of the gossip keys of the gateways' demand.
pub(crate) const KEY_PREFIX: &str = "limit:";

/// One gateway's demand for one service: requests offered per second in
/// all, and by its busiest clients.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Demand {
    /// Requests per second offered to the service at this gateway.
    pub total: f64,
    /// The busiest clients' requests per second, busiest first.
    pub clients: Vec<(IpAddr, f64)>,
}

impl Demand {
    /// The gossip key of `service`'s demand.
    pub(crate) fn key(service: &str) -> String {
        format!("{KEY_PREFIX}{service}")
    }

    /// The service a key names, if it is a demand key.
    pub(crate) fn service_of(key: &str) -> Option<&str> {
        key.strip_prefix(KEY_PREFIX)
    }

    /// As published: `{total};{ip}={rate},…`, rates with two decimals.
    pub(crate) fn encode(&self) -> String {
        let mut text = format!("{:.2}", self.total);
        for (i, (ip, rate)) in self.clients.iter().enumerate() {
            text.push(if i == 0 { ';' } else { ',' });
            let _ = write!(text, "{ip}={rate:.2}");
        }
        text
    }

    /// Reads a published demand. What cannot be read (a peer's garbage, a
    /// negative or infinite rate) counts as no demand, entry by entry.
    pub(crate) fn decode(text: &str) -> Self {
        let (total, list) = text.split_once(';').unwrap_or((text, ""));
        let rate = |t: &str| t.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        Self {
            total: rate(total).unwrap_or(0.0),
            clients: list
                .split(',')
                .filter_map(|item| {
                    let (ip, r) = item.split_once('=')?;
                    Some((ip.parse().ok()?, rate(r)?))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keys() {
        let d = Demand {
            total: 12.5,
            clients: vec![
                ("10.0.0.7".parse().unwrap(), 3.25),
                ("::1".parse().unwrap(), 1.0),
            ],
        };
        assert_eq!(d.encode(), "12.50;10.0.0.7=3.25,::1=1.00");
        assert_eq!(Demand::decode(&d.encode()), d);
        assert_eq!(Demand::key("story-service"), "limit:story-service");
        assert_eq!(
            Demand::service_of("limit:story-service"),
            Some("story-service")
        );
        assert_eq!(Demand::service_of("stats:story-service"), None);
        assert_eq!(Demand::decode("3").encode(), "3.00");
    }

    #[test]
    fn garbage_counts_as_no_demand_entry_by_entry() {
        let d = Demand::decode("-1;nonsense,10.0.0.1=2,10.0.0.2=inf,10.0.0.3=-4,x=1");
        assert_eq!(d.total, 0.0);
        assert_eq!(d.clients, vec![("10.0.0.1".parse().unwrap(), 2.0)]);
        assert_eq!(Demand::decode(""), Demand::default());
    }
}
