//! The deployment's live gateways, as every server on the bus hears them: each gateway's
//! heartbeat names the URL browsers reach it at (`--public-url`), and `GET /api/servers` lists
//! the ones heard within [`GATEWAY_SILENCE`], so that a client page can move to another gateway
//! when its own fails without a load balancer in front of them.
//!
//! The table is pure (tested without a network); [`watch`] feeds it from the heartbeats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use protocol::servers::{MAX_SERVERS, ServerUrl};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use tracing::warn;

use super::{GATEWAY_SILENCE, GatewayId, Subjects, Up};

/// Most gateways remembered: a bound on what heartbeats on the bus can make a server hold
/// (far above any deployment the capacity model needs: 1 000 000 clients take ≈ 100 gateways).
pub const MAX_PEERS: usize = 4096;

/// Each gateway's public URL and when it was last heard.
#[derive(Debug, Default)]
pub struct PeerTable {
    heard: HashMap<GatewayId, (String, Instant)>,
}

impl PeerTable {
    /// A heartbeat from `gateway` naming `url` (checked: a URL that does not parse is not
    /// listed, and the gateway's earlier one is forgotten, since it changed its mind).
    pub fn heard(&mut self, gateway: GatewayId, url: Option<&str>, now: Instant) {
        let Some(url) = url else {
            self.heard.remove(&gateway);
            return;
        };
        if let Err(e) = ServerUrl::parse(url) {
            warn!(%gateway, error = %e, "a gateway's heartbeat names a public URL that does not parse: not listed");
            self.heard.remove(&gateway);
            return;
        }
        // Pruned only when full: each heartbeat costs O(1), however many gateways there are.
        if self.heard.len() >= MAX_PEERS && !self.heard.contains_key(&gateway) {
            self.forget_silent(now);
        }
        if self.heard.len() >= MAX_PEERS && !self.heard.contains_key(&gateway) {
            warn!(%gateway, "{MAX_PEERS} gateways already listed: this one is not");
            return;
        }
        self.heard.insert(gateway, (url.to_owned(), now));
    }

    fn forget_silent(&mut self, now: Instant) {
        self.heard
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= GATEWAY_SILENCE);
    }

    /// The URLs of the gateways heard within [`GATEWAY_SILENCE`] of `now`, each once, at most
    /// [`MAX_SERVERS`], shuffled by `seed` (a fresh one per request): the clients of a failed
    /// gateway spread over the others instead of all moving to the first.
    pub fn live(&mut self, now: Instant, seed: u64) -> Vec<String> {
        self.forget_silent(now);
        let mut urls: Vec<String> = self.heard.values().map(|(u, _)| u.clone()).collect();
        urls.sort_unstable();
        urls.dedup();
        urls.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        urls.truncate(MAX_SERVERS);
        urls
    }
}

/// The table shared by the heartbeat watcher and the HTTP handler.
pub type Peers = Arc<Mutex<PeerTable>>;

/// Fills `peers` from every gateway's heartbeat until the subscription ends.
pub async fn watch(
    nats: async_nats::Client,
    subjects: Subjects,
    peers: Peers,
) -> Result<(), String> {
    let mut alive = nats
        .subscribe(subjects.alive_all())
        .await
        .map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
    while let Some(msg) = alive.next().await {
        let Some(gateway) = subjects.alive_of(msg.subject.as_str()) else {
            continue;
        };
        let Ok((Up::Alive { url, .. }, _)) = super::decode::<Up>(&msg.payload) else {
            continue; // the coordinator's watcher logs heartbeats that do not decode
        };
        let Ok(mut table) = peers.lock() else {
            return Err("the gateway table's lock is poisoned".into());
        };
        table.heard(gateway, url.as_deref(), Instant::now());
    }
    Err("the subscription to the gateways' heartbeats ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn g(id: &str) -> GatewayId {
        GatewayId::new(id).unwrap()
    }

    #[test]
    fn lists_the_gateways_heard_lately_each_once() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.heard(g("a"), Some("ws://a:1/ws"), t0);
        table.heard(g("b"), Some("ws://b:1/ws"), t0 + Duration::from_secs(3));
        // Two processes behind one URL (a proxy) are listed once.
        table.heard(g("c"), Some("ws://b:1/ws"), t0 + Duration::from_secs(3));
        let mut live = table.live(t0 + Duration::from_secs(4), 7);
        live.sort();
        assert_eq!(live, ["ws://a:1/ws", "ws://b:1/ws"]);
        // a is silent past GATEWAY_SILENCE: gone.
        assert_eq!(table.live(t0 + Duration::from_secs(6), 7), ["ws://b:1/ws"]);
    }

    /// What arrives on the bus is checked: a URL that would send browsers elsewhere than a
    /// socket, or one withdrawn, is not listed.
    #[test]
    fn a_bad_or_withdrawn_url_is_not_listed() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.heard(g("a"), Some("ws://a:1/ws"), t0);
        table.heard(g("a"), Some("javascript:alert(1)"), t0);
        assert!(table.live(t0, 1).is_empty());
        table.heard(g("b"), Some("ws://b:1/ws"), t0);
        table.heard(g("b"), None, t0);
        assert!(table.live(t0, 1).is_empty());
    }

    #[test]
    fn the_table_and_the_listing_are_bounded() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        for i in 0..MAX_PEERS + 10 {
            table.heard(g(&format!("g{i}")), Some(&format!("ws://h{i}/ws")), t0);
        }
        assert_eq!(table.heard.len(), MAX_PEERS);
        assert_eq!(table.live(t0, 3).len(), MAX_SERVERS);
    }

    /// Different pages get the gateways in different orders (each a permutation), so the
    /// clients of one that fails do not all move to the same one.
    #[test]
    fn orders_differ_by_seed_and_each_lists_every_gateway() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        for i in 0..6 {
            table.heard(g(&format!("g{i}")), Some(&format!("ws://h{i}/ws")), t0);
        }
        let firsts: std::collections::HashSet<String> = (0..64u64)
            .map(|seed| {
                let live = table.live(t0, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut sorted = live.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), 6, "{live:?}");
                live[0].clone()
            })
            .collect();
        assert_eq!(firsts.len(), 6, "every gateway comes first for some page");
    }
}
