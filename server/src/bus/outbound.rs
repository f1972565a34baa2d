//! One subject's messages of one turn of the bridge's loop (of a relay's 5 ms linger), before
//! they go on the bus: where several clients get the same message — a round's instructions,
//! its model, its accepts — or a gateway says the same of several clients — results held,
//! clients gone — they share one, which names them all. A round's control bytes then grow with the number of
//! distinct messages, plus a client id each, not with a message each.
//!
//! Each client's messages keep their order: a client joins an earlier shared message only if
//! none of its own messages comes after that one. Messages of different clients have no order
//! between them on the bus, as they had none in the coordinator's outboxes.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Down, Up};
use crate::coordinator::{RoundRef, VectorKind};

/// A message that several clients' copies of can share.
pub trait Shareable: Sized {
    /// What makes two clients' messages the same one.
    type Key: Hash + Eq;
    /// The client the message is about, if one.
    fn client(&self) -> Option<u64>;
    /// `None`: never shared.
    fn key(&self) -> Option<Self::Key>;
    /// Makes `self` (a message of the same key) also name `msg`'s client: `false` if it cannot.
    fn join(&mut self, msg: &Self) -> bool;
    /// How many clients it names.
    fn shared_len(&self) -> usize;
}

/// Most clients one shared message names (≈ 80 KB of ids and weights): past it, the next copy
/// starts another, so that no message nears NATS's 1 MiB payload limit.
const MAX_SHARED: usize = 4096;

/// One subject's messages waiting to go, in order, and their payloads.
#[derive(Debug)]
pub struct Outbound<M: Shareable> {
    entries: Vec<(M, Vec<u8>)>,
    /// Where each shared message is.
    shared: HashMap<M::Key, usize>,
    /// Where each client's last message is.
    last: HashMap<u64, usize>,
}

impl<M: Shareable> Default for Outbound<M> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            shared: HashMap::new(),
            last: HashMap::new(),
        }
    }
}

impl<M: Shareable> Outbound<M> {
    /// Adds a message, into an earlier one it can share.
    pub fn push(&mut self, msg: M, payload: Vec<u8>) {
        let client = msg.client();
        if let (Some(client), Some(key)) = (client, msg.key()) {
            let at = self.shared.get(&key).copied();
            let after_its_own = |i: usize| self.last.get(&client).is_none_or(|&l| l < i);
            if let Some(i) = at.filter(|&i| after_its_own(i))
                && self.entries[i].0.join(&msg)
            {
                self.last.insert(client, i);
                if self.entries[i].0.shared_len() >= MAX_SHARED {
                    self.shared.remove(&key);
                }
                return;
            }
            self.shared.insert(key, self.entries.len());
        }
        if let Some(client) = client {
            self.last.insert(client, self.entries.len());
        }
        self.entries.push((msg, payload));
    }

    /// The messages, in order; empty afterwards.
    pub fn take(&mut self) -> Vec<(M, Vec<u8>)> {
        self.shared.clear();
        self.last.clear();
        std::mem::take(&mut self.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What makes two of the coordinator's messages to clients the same one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub enum DownKey {
    Text(String),
    Model(u64),
    Accept(RoundRef, VectorKind),
}

impl Shareable for Down {
    type Key = DownKey;

    fn client(&self) -> Option<u64> {
        match self {
            Down::Text { client_id, .. }
            | Down::SendModel { client_id, .. }
            | Down::Accept { client_id, .. }
            | Down::Joined {
                result: Ok(client_id),
                ..
            }
            | Down::Binary { client_id }
            | Down::Close { client_id }
            | Down::Dropped { client_id }
            | Down::SendInFull { client_id, .. } => Some(*client_id),
            _ => None,
        }
    }

    fn key(&self) -> Option<DownKey> {
        Some(match self {
            Down::Text { text, .. } => DownKey::Text(text.clone()),
            Down::SendModel { model, .. } => DownKey::Model(*model),
            Down::Accept { round, kind, .. } => DownKey::Accept(*round, *kind),
            _ => return None,
        })
    }

    fn shared_len(&self) -> usize {
        match self {
            Down::Texts { clients, .. } | Down::SendModels { clients, .. } => clients.len(),
            Down::Accepts { clients, .. } => clients.len(),
            _ => 1,
        }
    }

    fn join(&mut self, msg: &Self) -> bool {
        match (self, msg) {
            (Down::Texts { clients, text }, Down::Text { client_id, text: t }) if text == t => {
                clients.push(*client_id);
            }
            (
                Down::SendModels { model, clients },
                Down::SendModel {
                    client_id,
                    model: m,
                },
            ) if model == m => {
                clients.push(*client_id);
            }
            (
                Down::Accepts {
                    round,
                    kind,
                    clients,
                },
                Down::Accept {
                    client_id,
                    round: r,
                    kind: k,
                    num_examples,
                },
            ) if round == r && kind == k => clients.push((*client_id, *num_examples)),
            (shared, msg) => {
                // A single client's message becomes a shared one, then takes the client.
                let many = match shared {
                    Down::Text { client_id, text } => Down::Texts {
                        clients: vec![*client_id],
                        text: text.clone(),
                    },
                    Down::SendModel { client_id, model } => Down::SendModels {
                        model: *model,
                        clients: vec![*client_id],
                    },
                    Down::Accept {
                        client_id,
                        round,
                        kind,
                        num_examples,
                    } => Down::Accepts {
                        round: *round,
                        kind: *kind,
                        clients: vec![(*client_id, *num_examples)],
                    },
                    _ => return false,
                };
                *shared = many;
                return shared.join(msg);
            }
        }
        true
    }
}

/// What makes two gateway messages about clients the same one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub enum UpKey {
    Held(u64, VectorKind),
    Leave,
}

impl Shareable for Up {
    type Key = UpKey;

    fn client(&self) -> Option<u64> {
        match self {
            Up::Leave { client_id }
            | Up::HeldRes { client_id, .. }
            | Up::TrainRes { client_id, .. }
            | Up::SecAgg { client_id, .. }
            | Up::TrainFailed { client_id, .. }
            | Up::EvaluateRes { client_id, .. } => Some(*client_id),
            _ => None,
        }
    }

    fn key(&self) -> Option<UpKey> {
        Some(match self {
            Up::HeldRes {
                server_round, kind, ..
            } => UpKey::Held(*server_round, *kind),
            Up::Leave { .. } => UpKey::Leave,
            _ => return None,
        })
    }

    fn shared_len(&self) -> usize {
        match self {
            Up::HeldMany { clients, .. } => clients.len(),
            Up::Leaves { clients } => clients.len(),
            _ => 1,
        }
    }

    fn join(&mut self, msg: &Self) -> bool {
        match (self, msg) {
            (
                Up::HeldMany {
                    server_round,
                    kind,
                    clients,
                },
                Up::HeldRes {
                    client_id,
                    server_round: r,
                    kind: k,
                    num_examples,
                },
            ) if server_round == r && kind == k => clients.push((*client_id, *num_examples)),
            (Up::Leaves { clients }, Up::Leave { client_id }) => clients.push(*client_id),
            (shared, msg) => {
                let many = match shared {
                    Up::HeldRes {
                        client_id,
                        server_round,
                        num_examples,
                        kind,
                    } => Up::HeldMany {
                        server_round: *server_round,
                        kind: *kind,
                        clients: vec![(*client_id, *num_examples)],
                    },
                    Up::Leave { client_id } => Up::Leaves {
                        clients: vec![*client_id],
                    },
                    _ => return false,
                };
                *shared = many;
                return shared.join(msg);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(client_id: u64, text: &str) -> Down {
        Down::Text {
            client_id,
            text: text.into(),
        }
    }

    /// The messages each client receives, in the order it receives them.
    fn per_client(entries: &[(Down, Vec<u8>)]) -> HashMap<u64, Vec<String>> {
        let mut got: HashMap<u64, Vec<String>> = HashMap::new();
        for (m, _) in entries {
            match m {
                Down::Text { client_id, text } => {
                    got.entry(*client_id).or_default().push(text.clone())
                }
                Down::Texts { clients, text } => {
                    for c in clients {
                        got.entry(*c).or_default().push(text.clone());
                    }
                }
                Down::SendModel { client_id, model } => got
                    .entry(*client_id)
                    .or_default()
                    .push(format!("model {model}")),
                Down::SendModels { model, clients } => {
                    for c in clients {
                        got.entry(*c).or_default().push(format!("model {model}"));
                    }
                }
                Down::Close { client_id } => {
                    got.entry(*client_id).or_default().push("close".into())
                }
                _ => {}
            }
        }
        got
    }

    /// A round's instructions and model to 1 000 clients are two messages, and every client
    /// still gets its own messages in its own order.
    #[test]
    fn the_same_message_to_many_clients_is_one_and_each_client_keeps_its_order() {
        let mut out = Outbound::<Down>::default();
        out.push(Down::Model { model: 7 }, vec![1, 2, 3]);
        for c in 0..1000 {
            out.push(text(c, "train"), Vec::new());
            out.push(
                Down::SendModel {
                    client_id: c,
                    model: 7,
                },
                Vec::new(),
            );
        }
        let entries = out.take();
        assert_eq!(entries.len(), 3, "{:?}", &entries[..3.min(entries.len())]);
        assert!(matches!(entries[0].0, Down::Model { model: 7 }));
        let got = per_client(&entries);
        assert_eq!(got.len(), 1000);
        assert!(got.values().all(|m| m == &["train", "model 7"]));
        assert!(out.is_empty());
    }

    /// A client whose own message came after a shared one does not join it (that would deliver
    /// it first): a second copy goes after.
    #[test]
    fn a_client_never_joins_a_message_before_one_of_its_own() {
        let mut out = Outbound::<Down>::default();
        out.push(text(1, "a"), Vec::new());
        out.push(text(2, "b"), Vec::new());
        out.push(text(2, "a"), Vec::new());
        out.push(Down::Close { client_id: 3 }, Vec::new());
        out.push(text(3, "a"), Vec::new());
        out.push(text(1, "b"), Vec::new());
        let entries = out.take();
        let got = per_client(&entries);
        assert_eq!(got[&1], ["a", "b"]);
        assert_eq!(got[&2], ["b", "a"]);
        assert_eq!(got[&3], ["close", "a"]);
        assert_eq!(entries.len(), 5, "{entries:?}");
    }

    /// Accepts of one round and kind share one message with each client's weight; another
    /// attempt's do not.
    #[test]
    fn accepts_share_a_message_per_round_and_kind() {
        let round = RoundRef {
            run_id: 1,
            server_round: 2,
            attempt: 1,
        };
        let accept = |client_id, round| Down::Accept {
            client_id,
            round,
            kind: VectorKind::Update,
            num_examples: 10 + client_id,
        };
        let mut out = Outbound::<Down>::default();
        out.push(accept(1, round), Vec::new());
        out.push(accept(2, round), Vec::new());
        let retry = RoundRef {
            attempt: 2,
            ..round
        };
        out.push(accept(3, retry), Vec::new());
        let entries = out.take();
        assert_eq!(entries.len(), 2);
        assert!(matches!(
            &entries[0].0,
            Down::Accepts { clients, .. } if clients == &[(1, 11), (2, 12)]
        ));
        assert!(matches!(entries[1].0, Down::Accept { client_id: 3, .. }));
    }

    /// Results held for one round and kind go up as one message; a client's leave stays after
    /// its own result.
    #[test]
    fn a_gateway_s_held_results_and_leaves_go_up_shared() {
        let held = |client_id| Up::HeldRes {
            client_id,
            server_round: 4,
            num_examples: 6,
            kind: VectorKind::Masked,
        };
        let mut out = Outbound::<Up>::default();
        out.push(Up::Leave { client_id: 9 }, Vec::new());
        out.push(held(1), Vec::new());
        out.push(held(2), Vec::new());
        out.push(Up::Leave { client_id: 1 }, Vec::new());
        out.push(held(3), Vec::new());
        let entries = out.take();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert!(matches!(&entries[0].0, Up::Leave { client_id: 9 }));
        assert!(matches!(
            &entries[1].0,
            Up::HeldMany { server_round: 4, kind: VectorKind::Masked, clients }
                if clients == &[(1, 6), (2, 6), (3, 6)]
        ));
        // Client 1's leave could not join the first leave (its result comes after that).
        assert!(matches!(&entries[2].0, Up::Leave { client_id: 1 }));
    }

    /// A shared message names at most MAX_SHARED clients; the next copy starts another.
    #[test]
    fn a_shared_message_stops_growing_at_its_cap() {
        let mut out = Outbound::<Down>::default();
        for c in 0..(MAX_SHARED as u64 + 10) {
            out.push(text(c, "train"), Vec::new());
        }
        let entries = out.take();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0.shared_len(), MAX_SHARED);
        assert_eq!(entries[1].0.shared_len(), 10);
    }
}
