//! `Cluster`: this member's handle on the gossip cluster.
//!
//! It hides chitchat entirely: it joins ([`crate::gossip`]), turns every
//! membership change into a new [`ClusterView`] on a watch channel
//! ([`crate::membership`]), walks the health lifecycle `starting → up →
//! draining → left`, and gives typed access to what members share: Eureka
//! leases ([`crate::leases`]), the gateways' figures and rate-limit demand
//! ([`crate::shared`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat::ChitchatHandle;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::acme::{self, CertAnnouncement};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::demand::Demand;
use crate::gossip::{Gossip, JoinError, Role, resolve_advertise};
use crate::lease::{Lease, LeaseError, LeaseLimits, LeaseOp};
use crate::member::{Health, MemberId, keys};
use crate::membership::spawn_view_builder;
use crate::stats::{ClusterStats, GatewayStats};
use crate::transport::{GossipStats, Udp};
use crate::view::ClusterView;
use crate::{leases, shared};

/// A cheap-to-clone handle on this member's place in the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    handle: ChitchatHandle,
    id: MemberId,
    service_addr: SocketAddr,
    view_rx: watch::Receiver<Arc<ClusterView>>,
    stats: Arc<GossipStats>,
    gossip_interval: Duration,
    drain_announce: Duration,
    /// What this gateway shares with the others (figures, demand).
    shared: Arc<shared::Shared>,
}

impl Cluster {
    /// Joins the cluster described by `config` in the given role.
    pub async fn join(config: &NodeConfig, role: Role) -> Result<Cluster, JoinError> {
        let advertise_ip = resolve_advertise(config).await?;
        let gossip = Gossip::spawn(config, role, advertise_ip, Arc::new(Udp)).await?;
        let view_rx = spawn_view_builder(&gossip.handle);
        // A part of a shared set, sealed in a direct message, fits a
        // datagram of the gossip MTU.
        let room = config
            .gossip_mtu
            .saturating_sub(128 + config.cluster.len())
            .max(256);
        let shared = shared::Shared::start(&gossip.handle, room);
        let t = &config.timings;
        Ok(Cluster {
            inner: Arc::new(Inner {
                handle: gossip.handle,
                id: gossip.id,
                service_addr: gossip.service_addr,
                view_rx,
                stats: gossip.stats,
                gossip_interval: t.gossip_interval,
                drain_announce: t.drain_announce,
                shared,
            }),
        })
    }
    /// The cluster as this member sees it; `changed()` fires on every change.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.inner.view_rx.clone()
    }

    /// This member's identity.
    pub fn id(&self) -> &MemberId {
        &self.inner.id
    }

    /// The service address this member advertises.
    pub fn advertised(&self) -> SocketAddr {
        self.inner.service_addr
    }

    /// Gossip traffic counters.
    pub fn stats(&self) -> &GossipStats {
        &self.inner.stats
    }

    /// Applies an Eureka operation to the lease of instance `id` of `app`:
    /// reads the newest copy any member holds, and writes the result as this
    /// member's own copy, one version higher. Seen by every member within a
    /// few gossip rounds.
    pub async fn lease(&self, app: &str, id: &str, op: LeaseOp) -> Result<Arc<Lease>, LeaseError> {
        self.lease_within(app, id, op, None).await
    }

    /// [`Cluster::lease`], refusing a registration of an instance not
    /// registered yet once the cluster holds `limits`.
    pub async fn lease_within(
        &self,
        app: &str,
        id: &str,
        op: LeaseOp,
        limits: Option<LeaseLimits>,
    ) -> Result<Arc<Lease>, LeaseError> {
        if matches!(op, LeaseOp::Register(_)) {
            let view = self.inner.view_rx.borrow().clone();
            if view
                .members()
                .any(|m| m.lease.is_none() && (m.instance_id() == id || m.id.node == id))
            {
                return Err(LeaseError::Native(id.to_string()));
            }
        }
        let chitchat = self.inner.handle.chitchat();
        let next = leases::apply(&mut *chitchat.lock().await, app, id, op, now_ms(), limits)?;
        Ok(Arc::new(next))
    }

    /// Starts keeping leases, on a gateway: once a second, adopts the leases
    /// of gateways that are gone and forgets its own copies that ran out.
    pub fn keep_leases(&self) {
        let chitchat = Arc::downgrade(&self.inner.handle.chitchat());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(strong) = chitchat.upgrade() else {
                    return;
                };
                let (adopted, dropped) = leases::keep(&mut *strong.lock().await, now_ms());
                if dropped > 0 {
                    debug!(dropped, adopted, "lease upkeep");
                }
            }
        });
    }

    /// Publishes (`Some`) or withdraws (`None`) the key authorization of
    /// ACME challenge `token`, for any gateway the CA reaches to answer.
    pub async fn set_acme_challenge(&self, token: &str, key_authorization: Option<&str>) {
        let chitchat = self.inner.handle.chitchat();
        acme::set_challenge(&mut *chitchat.lock().await, token, key_authorization);
    }

    /// The key authorization a live member publishes for `token`.
    pub async fn acme_challenge(&self, token: &str) -> Option<String> {
        let chitchat = self.inner.handle.chitchat();
        acme::challenge(&*chitchat.lock().await, token)
    }

    /// Claims (`Some(since_ms)`) or gives up (`None`) the ordering of the
    /// certificate `name`.
    pub async fn set_acme_claim(&self, name: &str, since_ms: Option<u64>) {
        let chitchat = self.inner.handle.chitchat();
        acme::set_claim(&mut *chitchat.lock().await, name, since_ms);
    }

    /// The live claims to order `name`, the one that orders first.
    pub async fn acme_claims(&self, name: &str) -> Vec<(MemberId, u64)> {
        let chitchat = self.inner.handle.chitchat();
        acme::claims(&*chitchat.lock().await, name)
    }

    /// Announces (`Some`) or withdraws (`None`) this member's copy of the
    /// certificate `name`.
    pub async fn set_acme_cert(&self, name: &str, held: Option<&CertAnnouncement>) {
        let chitchat = self.inner.handle.chitchat();
        acme::set_cert(&mut *chitchat.lock().await, name, held);
    }

    /// The other live members' copies of `name`, the longest-lived first.
    pub async fn acme_certs(&self, name: &str) -> Vec<(MemberId, CertAnnouncement)> {
        let chitchat = self.inner.handle.chitchat();
        acme::certs(&*chitchat.lock().await, name)
    }

    /// Publishes this gateway's traffic figures to the other gateways
    /// (replacing the previous ones: records of services and instances no
    /// longer in `stats` are gone). Sent to them alone: services carry
    /// nothing of it.
    pub async fn publish_stats(&self, stats: &GatewayStats) {
        let inner = &self.inner;
        let chitchat = inner.handle.chitchat();
        let c = chitchat.lock().await;
        shared::publish_stats(&c, &inner.handle, &inner.shared, stats);
    }

    /// Every live gateway's figures, merged.
    pub async fn cluster_stats(&self) -> ClusterStats {
        let chitchat = self.inner.handle.chitchat();
        shared::cluster_stats(&*chitchat.lock().await, &self.inner.shared)
    }

    /// Publishes this gateway's rate-limit demand, per service, to the other
    /// gateways (replacing the previous one: a service no longer listed is
    /// gone).
    pub async fn publish_demand(&self, demands: Vec<(String, Demand)>) {
        let inner = &self.inner;
        let chitchat = inner.handle.chitchat();
        let c = chitchat.lock().await;
        shared::publish_demand(&c, &inner.handle, &inner.shared, demands);
    }

    /// The other live gateways' rate-limit demand, as `(service, demand)`.
    pub async fn demands(&self) -> Vec<(String, Demand)> {
        let chitchat = self.inner.handle.chitchat();
        shared::demands(&*chitchat.lock().await, &self.inner.shared)
    }

    /// The gossip protocol this member speaks now (`"v3"`, `"v4"`): with
    /// `SHOAL_GOSSIP_PROTOCOL=auto`, V4 once every live member can.
    pub async fn protocol(&self) -> String {
        let chitchat = self.inner.handle.chitchat();
        let version = chitchat.lock().await.protocol_version();
        format!("v{}", version.to_code())
    }

    /// Publishes a new health.
    pub async fn set_health(&self, health: Health) {
        self.inner
            .handle
            .with_chitchat(|c| c.self_node_state().set(keys::HEALTH, health.as_str()))
            .await;
        info!(member = %self.inner.id, %health, "health");
    }

    /// First step of a graceful stop: announces `draining` and waits long
    /// enough for the news to reach every gateway, so that by the time the
    /// caller stops accepting, nobody is sending new requests.
    pub async fn begin_drain(&self) {
        self.set_health(Health::Draining).await;
        tokio::time::sleep(self.inner.drain_announce).await;
    }

    /// Last step: announces `left`, gives the gossip a few rounds to carry
    /// it, and stops gossiping.
    pub async fn leave(&self) {
        self.set_health(Health::Left).await;
        tokio::time::sleep(self.inner.gossip_interval * 3).await;
        self.inner.handle.abort();
        info!(member = %self.inner.id, "left the cluster");
    }

    /// chitchat itself, for the unit tests of the modules it backs.
    #[cfg(test)]
    pub(crate) fn chitchat(&self) -> Arc<tokio::sync::Mutex<chitchat::Chitchat>> {
        self.inner.handle.chitchat()
    }

    /// Stops gossiping without a word, as a killed process does.
    #[cfg(test)]
    pub(crate) fn abort(&self) {
        self.inner.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{members, wait_for};

    fn health_of(c: &Cluster, id: &MemberId) -> Option<Health> {
        c.view()
            .borrow()
            .members()
            .find(|m| &m.id == id)
            .map(|m| m.health)
    }

    #[tokio::test]
    async fn health_walks_up_draining_left_in_every_view() {
        let g = members("orders", 2).await;
        let (a, b) = (&g[0], &g[1]);
        let id = a.id().clone();
        assert_eq!(health_of(b, &id), Some(Health::Up));
        assert_eq!(a.advertised().ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        a.set_health(Health::Draining).await;
        wait_for("draining in the other view", || {
            let id = id.clone();
            async move { health_of(b, &id) == Some(Health::Draining) }
        })
        .await;
        a.leave().await;
        wait_for("a member that left out of the other view", || {
            let id = id.clone();
            async move { health_of(b, &id).is_none() }
        })
        .await;
        assert!(
            b.stats()
                .bytes_received
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }
}
