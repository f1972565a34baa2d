//! A gateway's messages of one turn of the bridge's loop, before they go on the bus: where several
//! clients get the same message — a round's instructions, its model, its accepts — they share
//! one, which names them all. A round's control bytes to a gateway then grow with the number of
//! distinct messages, plus a client id each, not with a message each.
//!
//! Each client's messages keep their order: a client joins an earlier shared message only if
//! none of its own messages comes after that one. Messages of different clients have no order
//! between them on the bus, as they had none in the coordinator's outboxes.

use std::collections::HashMap;

use super::Down;
use crate::coordinator::{RoundRef, VectorKind};

/// What makes two clients' messages the same one.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Shared {
    Text(String),
    Model(u64),
    Accept(RoundRef, VectorKind),
}

/// One gateway's messages of this turn, in order, and their payloads.
#[derive(Debug, Default)]
pub struct Outbound {
    entries: Vec<(Down, Vec<u8>)>,
    /// Where each shared message is.
    shared: HashMap<Shared, usize>,
    /// Where each client's last message is.
    last: HashMap<u64, usize>,
}

impl Outbound {
    /// Adds a message, into an earlier one it can share.
    pub fn push(&mut self, msg: Down, payload: Vec<u8>) {
        let (client, key) = match &msg {
            Down::Text { client_id, text } => (Some(*client_id), Some(Shared::Text(text.clone()))),
            Down::SendModel { client_id, model } => (Some(*client_id), Some(Shared::Model(*model))),
            Down::Accept {
                client_id,
                round,
                kind,
                ..
            } => (Some(*client_id), Some(Shared::Accept(*round, *kind))),
            Down::Joined {
                result: Ok(client_id),
                ..
            }
            | Down::Binary { client_id }
            | Down::Close { client_id }
            | Down::Dropped { client_id } => (Some(*client_id), None),
            _ => (None, None),
        };
        if let (Some(client), Some(key)) = (client, key) {
            let at = self.shared.get(&key).copied();
            let after_its_own = |i: usize| self.last.get(&client).is_none_or(|&l| l < i);
            if let Some(i) = at.filter(|&i| after_its_own(i))
                && join(&mut self.entries[i].0, &msg)
            {
                self.last.insert(client, i);
                return;
            }
            let i = self.entries.len();
            self.shared.insert(key, i);
            self.last.insert(client, i);
            self.entries.push((msg, payload));
            return;
        }
        if let Some(client) = client {
            self.last.insert(client, self.entries.len());
        }
        self.entries.push((msg, payload));
    }

    /// The messages, in order; empty afterwards.
    pub fn take(&mut self) -> Vec<(Down, Vec<u8>)> {
        self.shared.clear();
        self.last.clear();
        std::mem::take(&mut self.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Makes `shared` also name the client of `msg` (the same message): `false` if they differ.
fn join(shared: &mut Down, msg: &Down) -> bool {
    match (shared, msg) {
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
            // A single message becomes a shared one, then takes the client.
            let Some(many) = as_shared(shared) else {
                return false;
            };
            *shared = many;
            return join(shared, msg);
        }
    }
    true
}

/// A single client's message as a shared one naming that client, if it can be shared.
fn as_shared(single: &Down) -> Option<Down> {
    Some(match single {
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
        _ => return None,
    })
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
        let mut out = Outbound::default();
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
        let mut out = Outbound::default();
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
        let mut out = Outbound::default();
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
}
