//! One secure-aggregation round with every member and the server in one process, timed step
//! by step with the clock the host gives (so the same code measures natively and in a browser
//! worker) and with the bytes of every message as the wire encodes it. Used by the
//! `secagg-cost` binary and by the client's wasm benchmark export.

use std::collections::BTreeMap;

use protocol::secagg::{Bytes32, MemberKeys, PeerKeys, SecAggSetup, UnmaskRequest};
use protocol::{ClientMessage, MaskedFrame, ServerMessage};
use rand::Rng;
use rand::rngs::ChaCha20Rng;

use crate::client::{Advertised, Holding, Masked, Member, Shared};
use crate::server::Round;
use crate::{Encoding, Params};

/// TinyCNN's parameters, plus the weight.
pub const VECTOR_LEN: usize = 12_810 + 1;

/// What one round cost.
#[derive(Debug, Default, Clone)]
pub struct Costs {
    /// Per member: seconds in each client step.
    pub client_s: [Vec<f64>; 5],
    /// Per member: bytes sent and received.
    pub sent: Vec<usize>,
    pub received: Vec<usize>,
    /// Server seconds: close keys, close shares, add masked vectors, close masked, unmask.
    pub server_s: [f64; 5],
}

fn timed<T>(now: &dyn Fn() -> f64, f: impl FnOnce() -> T) -> (T, f64) {
    let t = now();
    let out = f();
    (out, now() - t)
}

/// One round of `n` members with `neighbours` each, 5 % dropping after their shares; `now`
/// gives seconds. Panics if the protocol fails: a benchmark of a broken protocol means nothing.
pub fn round(n: u32, neighbours: u32, rng: &mut ChaCha20Rng, now: &dyn Fn() -> f64) -> Costs {
    let mut c = Costs {
        sent: vec![0; n as usize + 1],
        received: vec![0; n as usize + 1],
        ..Default::default()
    };
    let mut session = [0u8; 32];
    rng.fill_bytes(&mut session);
    let graph = crate::graph::neighbourhoods(n, neighbours, rng);
    let holders = graph[0].len() + 1;
    let config = protocol::admin::SecureAggregationConfig::default();
    let params = Params {
        session: Bytes32(session),
        members: n,
        threshold: config.threshold_for(holders),
        vector_len: VECTOR_LEN,
    };
    let dropping = |m: u32| m % 20 == 7; // 5 %, after their shares
    let mut keys = Round::start(params.clone(), graph.clone()).expect("round");
    let mut advertised: BTreeMap<u32, Advertised> = BTreeMap::new();
    for m in 1..=n {
        let setup = SecAggSetup {
            server_round: 1,
            session: params.session,
            member: m,
            members: n,
            threshold: params.threshold,
            neighbours: graph[m as usize - 1].iter().copied().collect(),
            clip: config.clip,
            levels: config.levels,
            max_weight: config.max_weight,
            reuse_keys: false,
        };
        c.received[m as usize] += ServerMessage::SecAggSetup(setup).encode().len();
        let ((a, k), s) = timed(now, || {
            Member::new(params.clone(), m, graph[m as usize - 1].clone())
                .expect("member")
                .advertise(rng)
        });
        c.client_s[0].push(s);
        c.sent[m as usize] += keys_msg(k).len();
        keys.add(m, k).expect("keys");
        advertised.insert(m, a);
    }
    let ((mut shares, relay), s) = timed(now, || keys.close().expect("close keys"));
    c.server_s[0] = s;
    let mut shared: BTreeMap<u32, Shared> = BTreeMap::new();
    for (m, peers) in relay {
        let list: Vec<PeerKeys> = peers
            .iter()
            .map(|(&member, &keys)| PeerKeys { member, keys })
            .collect();
        c.received[m as usize] += ServerMessage::SecAggPeers {
            server_round: 1,
            peers: list,
        }
        .encode()
        .len();
        let ((next, msg), s) = timed(now, || {
            advertised.remove(&m).unwrap().share(&peers, rng).unwrap()
        });
        c.client_s[1].push(s);
        c.sent[m as usize] += ClientMessage::SecAggShares {
            server_round: 1,
            shared: msg.clone(),
        }
        .encode()
        .len();
        shares.add(m, msg).expect("shares");
        shared.insert(m, next);
    }
    let ((mut masked, inboxes), s) = timed(now, || shares.close().expect("close shares"));
    c.server_s[1] = s;
    let encoding = Encoding {
        clip: config.clip,
        levels: config.levels,
    };
    let mut waiting: BTreeMap<u32, Masked> = BTreeMap::new();
    for (m, inbox) in inboxes {
        c.received[m as usize] += ServerMessage::SecAggInbox {
            server_round: 1,
            envelopes: inbox.clone(),
        }
        .encode()
        .len();
        let update: Vec<f32> = (0..VECTOR_LEN - 1)
            .map(|k| ((k * 7 + m as usize) % 100) as f32 * 1e-3)
            .collect();
        let ((holding, y), s) = timed(now, || {
            let holding: Holding = shared.remove(&m).unwrap().receive(&inbox).unwrap();
            let encoded = encoding.encode(0.1, &update, rng).unwrap();
            let (next, y) = holding.mask(&encoded, &Bytes32([0; 32])).unwrap();
            (next, y)
        });
        c.client_s[2].push(s);
        if dropping(m) {
            continue;
        }
        c.sent[m as usize] += ClientMessage::TrainRes {
            server_round: 1,
            num_examples: 6000,
            steps: 12,
        }
        .encode()
        .len()
            + MaskedFrame {
                server_round: 1,
                values: y.clone(),
            }
            .encode()
            .unwrap()
            .len();
        let ((), s) = timed(now, || masked.add(m, &y).expect("masked"));
        c.server_s[2] += s;
        waiting.insert(m, holding);
    }
    let ((mut reveals, requests), s) = timed(now, || masked.close().expect("close masked"));
    c.server_s[3] = s;
    for (m, request) in requests {
        c.received[m as usize] += unmask_msg(&request).len();
        let (reveal, s) = timed(now, || {
            waiting.remove(&m).unwrap().reveal(&request).unwrap()
        });
        c.client_s[3].push(s);
        c.sent[m as usize] += ClientMessage::SecAggReveal {
            server_round: 1,
            reveal: reveal.clone(),
        }
        .encode()
        .len();
        reveals.add(m, &reveal).expect("reveal");
    }
    let (unmasked, s) = timed(now, || reveals.finish(&Bytes32([0; 32])).expect("unmask"));
    c.server_s[4] = s;
    assert_eq!(
        unmasked.recovered.len(),
        (1..=n).filter(|&m| dropping(m)).count()
    );
    // The decode is part of the server's unmask cost.
    let ((), s) = timed(now, || {
        encoding
            .decode(&unmasked.sum, unmasked.counted.len() as u32)
            .map(|_| ())
            .expect("decode")
    });
    c.server_s[4] += s;
    c.client_s[4] = c.client_s[..4]
        .iter()
        .fold(vec![0.0; c.client_s[0].len()], |mut acc, step| {
            for (a, s) in acc.iter_mut().zip(step) {
                *a += s;
            }
            acc
        });
    c
}

fn keys_msg(keys: MemberKeys) -> String {
    ClientMessage::SecAggKeys {
        server_round: 1,
        keys,
    }
    .encode()
}

fn unmask_msg(request: &UnmaskRequest) -> String {
    ServerMessage::SecAggUnmask {
        server_round: 1,
        request: request.clone(),
    }
    .encode()
}
