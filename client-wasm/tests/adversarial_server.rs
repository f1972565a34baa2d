//! The client's privacy promise, tested as a hostile server would try to break it: each test
//! sends the real `Session` (and so the real `learning::fit`) what such a server could send,
//! and asserts that the client refuses or that its ledger stays true.

use client_wasm::session::{Action, Notice, Outgoing, OwnFiles, Session, SessionOptions};
use learning::data::to_idx;
use learning::task::{FASHION_MNIST, MNIST};
use learning::{Batching, Dataset, DpSgdConfig, TrainConfig};
use protocol::config::ShardScheme;
use protocol::ledger::{DatasetLedger, LedgerSlot, fingerprint};
use protocol::messages::{Assignment, TaskSpec};
use protocol::worker::SavedClient;
use protocol::{ClientMessage, FrameKind, ServerMessage, TensorFrame};

const PARAMS: usize = 12_810;

fn records(n: usize, salt: u8) -> Dataset {
    Dataset {
        images: (0..n * 784).map(|i| (i % 251) as u8 ^ salt).collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
    }
}

fn global() -> Vec<f32> {
    learning::TinyCnnConfig::new()
        .init(&burn::tensor::Device::flex())
        .to_flat()
}

fn dp(noise_multiplier: f32, delta: f64) -> TrainConfig {
    TrainConfig {
        batching: Batching::BatchSize(10),
        learning_rate: 0.5,
        dp: Some(DpSgdConfig {
            max_grad_norm: 1.0,
            noise_multiplier,
            delta,
            distributed: None,
        }),
        ..TrainConfig::default()
    }
}

fn own(n: usize, cap: Option<f64>) -> Session {
    Session::new(SessionOptions {
        own_data: Some(OwnFiles::from_dataset(records(n, 0))),
        epsilon_cap: cap,
        can_evaluate: true,
        ..Default::default()
    })
    .unwrap()
}

fn model_frame(server_round: u64, values: Vec<f32>) -> Vec<u8> {
    TensorFrame {
        kind: FrameKind::GlobalModel,
        server_round,
        values,
    }
    .encode()
    .unwrap()
}

/// The server asks for a round; the session's answer after running any job it asked for.
fn round(s: &mut Session, server_round: u64, config: TrainConfig) -> Vec<Action> {
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round,
        config,
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    let mut out = s.on_binary(&model_frame(server_round, global())).unwrap();
    match out.pop() {
        Some(Action::Train(job)) => s.on_trained(job.run(&mut |_| {})),
        Some(other) => {
            out.push(other);
            out
        }
        None => out,
    }
}

/// The server asks for an evaluation; the session's answer.
fn evaluation(s: &mut Session, server_round: u64) -> Vec<Action> {
    let ins = ServerMessage::EvaluateIns {
        server_round,
        task: MNIST.spec(),
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    let mut out = s.on_binary(&model_frame(server_round, global())).unwrap();
    match out.pop() {
        Some(Action::Evaluate(job)) => s.on_evaluated(job.run()),
        Some(other) => {
            out.push(other);
            out
        }
        None => out,
    }
}

fn texts(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(Outgoing::Text(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn messages(actions: &[Action]) -> Vec<ClientMessage> {
    texts(actions)
        .iter()
        .map(|t| ClientMessage::decode(t).unwrap())
        .collect()
}

fn refusal(actions: &[Action]) -> (String, bool) {
    match messages(actions).as_slice() {
        [
            ClientMessage::TrainFailed {
                reason,
                refuses_run,
                ..
            },
        ] => (reason.clone(), *refuses_run),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_server_chosen_delta_cannot_loosen_the_cap() {
    // σ = 1.2 at δ = 0.5 looks cheap; at δ = 1e-5 it is not. The client refuses δ ≥ 1/n and
    // accounts every round at its own δ.
    let mut s = own(200, Some(3.0));
    let (reason, refuses_run) = refusal(&round(&mut s, 1, dp(1.2, 0.5)));
    assert!(reason.contains("the server's δ is 5e-1"), "{reason}");
    assert!(refuses_run);
    assert_eq!(s.epsilon(), Some(0.0), "nothing spent");

    // An allowed but loose δ (1e-3 < 1/200): trained, stated at the client's δ = 1e-5.
    let out = messages(&round(&mut s, 2, dp(1.2, 1e-3)));
    assert!(matches!(out[0], ClientMessage::TrainRes { .. }), "{out:?}");
    assert_eq!(s.spent().unwrap().delta, 1e-5);
    let mut ledger = learning::PrivacyLedger::default();
    ledger.record(10.0 / 200.0, 1.2f32 as f64, 20).unwrap();
    assert_eq!(s.epsilon(), Some(ledger.epsilon(1e-5).unwrap()));
    assert!(ledger.epsilon(1e-5).unwrap() > ledger.epsilon(1e-3).unwrap());
    // Rounds continue until the cap at the client's δ, then stop before spending; the server
    // is told the cap, not the ε spent (which would link this data's earlier runs).
    let mut last = s.epsilon().unwrap();
    for r in 3..40 {
        let out = round(&mut s, r, dp(1.2, 1e-3));
        if let [ClientMessage::TrainFailed { reason, .. }] = messages(&out).as_slice() {
            assert_eq!(
                reason,
                "this round would take this client past its own ε cap of 3"
            );
            assert_eq!(s.epsilon(), Some(last));
            assert!(last <= 3.0);
            return;
        }
        last = s.epsilon().unwrap();
    }
    panic!("the cap never stopped training");
}

#[test]
fn nothing_about_the_private_examples_leaves_un_noised() {
    let mut s = own(20, None);
    let Outgoing::Text(hello) = s.hello() else {
        panic!()
    };
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(
        hello["capabilities"]["own_data"],
        serde_json::json!({ "num_examples": 20 }),
        "the size is released (README), the label histogram is not"
    );
    let out = round(&mut s, 1, dp(1.0, 1e-5));
    let res: serde_json::Value = serde_json::from_str(&texts(&out)[0]).unwrap();
    let mut keys: Vec<&str> = res
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["num_examples", "server_round", "steps", "type"],
        "no training loss, accuracy, clipped fraction or ε: {res}"
    );
}

#[test]
fn evaluation_is_no_oracle_it_is_noisy_charged_and_capped() {
    // 2 000 records: the noise (std ≈ 71 on the correct count) is a few percent of accuracy. (On
    // 20 records the answer is noise clamped to 0 or 1, as it should be.)
    let mut s = own(2000, None);
    let mut answers = Vec::new();
    let mut spent = 0.0;
    for r in 1..=4 {
        match messages(&evaluation(&mut s, r)).as_slice() {
            [ClientMessage::EvaluateRes { accuracy, .. }] => answers.push(*accuracy),
            other => panic!("{other:?}"),
        }
        let now = s.epsilon().unwrap();
        assert!(
            now > spent,
            "every evaluation is charged: {now} after {spent}"
        );
        spent = now;
    }
    // The same model on the same data: exact answers would all be equal.
    answers.sort_by(f64::total_cmp);
    answers.dedup();
    assert!(answers.len() > 1, "{answers:?}");

    // With a cap, probing stops at the cap: refused answers send nothing and spend nothing.
    let mut capped = own(2000, Some(spent));
    let mut sent = 0;
    for r in 1..=10 {
        sent += messages(&evaluation(&mut capped, r)).len();
    }
    assert_eq!(sent, 4, "as many answers as the cap affords");
    assert!(capped.epsilon().unwrap() <= spent);
}

fn shard(run_id: u64, data: &Dataset) -> (String, Vec<u8>, Vec<u8>) {
    let (images, labels) = to_idx(data);
    let a = ServerMessage::Assignment(Assignment {
        task: MNIST.spec(),
        run_id,
        shard_index: 0,
        num_shards: 10,
        scheme: ShardScheme::Iid,
        num_examples: data.len() as u64,
        label_histogram: data.label_histogram().to_vec(),
        images_path: "/i".into(),
        labels_path: "/l".into(),
    });
    (a.encode(), images, labels)
}

fn shard_session(ledgers: Vec<LedgerSlot>, key: Option<&str>) -> Session {
    Session::new(SessionOptions {
        resume: key.map(|k| SavedClient {
            client_key: Some(k.into()),
        }),
        ledgers,
        ..Default::default()
    })
    .unwrap()
}

fn receive(s: &mut Session, shard: &(String, Vec<u8>, Vec<u8>)) {
    let out = s.on_text(&shard.0).unwrap();
    if out.iter().any(|a| matches!(a, Action::FetchShard { .. })) {
        s.on_shard(&shard.1, &shard.2).unwrap();
    }
}

#[test]
fn a_new_assignment_run_or_tab_never_resets_the_ledger_of_the_same_records() {
    let data = records(20, 0);
    let run1 = shard(1, &data);
    let fp = fingerprint(&run1.1, &run1.2);
    let mut s = shard_session(Vec::new(), None);
    receive(&mut s, &run1);
    round(&mut s, 1, dp(1.0, 1e-5));
    let spent = s.epsilon().unwrap();
    assert!(spent > 0.0);

    // Another shard of another run: its own records, its own ledger…
    let other = shard(2, &records(20, 7));
    receive(&mut s, &other);
    assert_eq!(s.epsilon(), Some(0.0));
    // …and a third run that hands out the same records again: the ledger is theirs.
    receive(&mut s, &shard(3, &data));
    assert_eq!(s.epsilon(), Some(spent));

    // A new tab (new key) with what storage holds: the same records, the same ledger.
    let stored = s.ledger_of(&fp).unwrap();
    let mut tab = shard_session(vec![LedgerSlot::Known(stored)], None);
    receive(&mut tab, &run1);
    assert_eq!(tab.epsilon(), Some(spent));
    round(&mut tab, 1, dp(1.0, 1e-5));
    assert!(tab.epsilon().unwrap() > spent);
}

#[test]
fn an_unreadable_stored_ledger_blocks_training_and_evaluation() {
    let data = records(20, 0);
    let run = shard(1, &data);
    let fp = fingerprint(&run.1, &run.2);
    let tampered = LedgerSlot::from_stored(
        &fp,
        &protocol::ledger::seal(&DatasetLedger {
            fingerprint: fp.clone(),
            history: vec![(0.5, 1.0, 100)],
            unprotected_rounds: 0,
            skellam: Vec::new(),
        })
        .unwrap()
        .replace("100]", "1]"),
    );
    assert!(matches!(tampered, LedgerSlot::Unreadable { .. }));
    let mut s = shard_session(vec![tampered], Some("k"));
    receive(&mut s, &run);
    assert!(s.blocked().unwrap().contains("changed outside"));
    let (reason, _) = refusal(&round(&mut s, 1, dp(1.0, 1e-5)));
    assert!(reason.contains("unreadable"), "{reason}");
    assert!(messages(&evaluation(&mut s, 1)).is_empty());
    assert_eq!(
        s.ledger_of(&fp),
        None,
        "the unreadable entry is left for the user to reset"
    );
}

#[test]
fn a_round_without_dp_makes_epsilon_infinite_and_a_capped_client_refuses_it() {
    let no_dp = TrainConfig {
        dp: None,
        ..dp(1.0, 1e-5)
    };
    let mut capped = own(20, Some(100.0));
    let (reason, refuses_run) = refusal(&round(&mut capped, 1, no_dp));
    assert!(
        reason.contains("only with differential privacy"),
        "{reason}"
    );
    assert!(refuses_run);

    let mut s = own(20, None);
    round(&mut s, 1, no_dp);
    assert_eq!(s.epsilon(), Some(f64::INFINITY));
    // It stays ∞ after DP rounds too, and the ledger says so when stored.
    round(&mut s, 2, dp(1.0, 1e-5));
    assert_eq!(s.epsilon(), Some(f64::INFINITY));
    let fp = s.dataset().unwrap().to_owned();
    assert_eq!(s.ledger_of(&fp).unwrap().unprotected_rounds, 1);
}

#[test]
fn a_tiny_sample_rate_cannot_make_the_client_train_forever() {
    let mut s = own(20, Some(3.0));
    for q in [1e-300, 1e-9] {
        let config = TrainConfig {
            batching: Batching::SampleRate(q),
            ..dp(1.0, 1e-5)
        };
        let (reason, _) = refusal(&round(&mut s, 1, config));
        assert!(reason.contains("at most 100 000 steps"), "{reason}");
    }
    assert_eq!(s.epsilon(), Some(0.0));
}

#[test]
fn a_model_that_overflows_cannot_smuggle_an_unclipped_gradient() {
    // Every per-example gradient is non-finite: each is dropped (clip factor 0), so the update
    // is pure noise, or the round fails as diverged; never a NaN update or a crash.
    let mut s = own(20, None);
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 1,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    s.on_text(&ins.encode()).unwrap();
    let huge: Vec<f32> = global().iter().map(|v| v * 1e30).collect();
    let Some(Action::Train(job)) = s.on_binary(&model_frame(1, huge)).unwrap().pop() else {
        panic!()
    };
    let out = s.on_trained(job.run(&mut |_| {}));
    for a in &out {
        if let Action::Send(Outgoing::Binary(b)) = a {
            let f = TensorFrame::decode(b).unwrap();
            assert!(f.values.iter().all(|v| v.is_finite()));
            assert_eq!(f.values.len(), PARAMS);
        }
    }
    assert!(
        s.epsilon().unwrap() > 0.0,
        "the noisy steps were still counted"
    );
}

#[test]
fn two_tabs_spending_on_the_same_records_add_up() {
    // Two tabs of one browser hold the same records (a shard handed out again in a later run,
    // or own files before Web Locks): each started from the same stored ledger. Each stores
    // what it spent *added* to the stored ledger, and a tab that hears of the other's spending
    // counts it against its own cap. Before, the last tab to save wrote its ledger over the
    // other's, and ε went down after a reload (3.000 → 2.724 in the browser test).
    let mut stored: Option<DatasetLedger> = None;
    let mut store = |spent: Option<DatasetLedger>| {
        let spent = spent.expect("a job spends");
        let mut l = stored
            .take()
            .unwrap_or_else(|| DatasetLedger::new(&spent.fingerprint));
        l.add(&spent);
        stored = Some(l.clone());
        l
    };
    let mut a = own(20, None);
    let mut b = own(20, None);
    round(&mut a, 1, dp(1.0, 1e-5));
    let after_a = store(a.take_spend());
    round(&mut b, 1, dp(1.0, 1e-5));
    round(&mut b, 2, dp(1.0, 1e-5));
    let both = store(b.take_spend());
    assert_eq!(both.history, vec![(0.5, 1.0, 6)], "1 round of A + 2 of B");
    assert!(after_a.history[0].2 < both.history[0].2);
    // B hears of the stored ledger: its ε is that of all three rounds.
    b.refresh(LedgerSlot::Known(both.clone()));
    let mut three = learning::PrivacyLedger::default();
    three.record(0.5, 1.0, 6).unwrap();
    assert_eq!(b.epsilon(), Some(three.epsilon(1e-5).unwrap()));
    // A spends again after the refresh: what it adds is its own round only.
    a.refresh(LedgerSlot::Known(both));
    round(&mut a, 2, dp(1.0, 1e-5));
    assert_eq!(store(a.take_spend()).history, vec![(0.5, 1.0, 8)]);
}

#[test]
fn a_ledger_found_unreadable_mid_round_stays_blocked() {
    // Another tab (or a script) edits the stored ledger while this tab trains: the job's
    // spending does not turn the entry back into a readable, smaller ledger.
    let mut s = own(20, None);
    let fp = s.dataset().unwrap().to_owned();
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 1,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    s.on_text(&ins.encode()).unwrap();
    let Some(Action::Train(job)) = s.on_binary(&model_frame(1, global())).unwrap().pop() else {
        panic!("a train job")
    };
    s.refresh(LedgerSlot::Unreadable {
        fingerprint: fp.clone(),
        reason: "its checksum does not match".into(),
    });
    s.on_trained(job.run(&mut |_| {}));
    assert!(s.blocked().is_some());
    assert_eq!(s.ledger_of(&fp), None);
    // The spend is still handed to storage, which refuses to add it to an unreadable entry:
    // the worker then leaves before anything is released.
    assert!(s.take_spend().is_some());
}

#[test]
fn a_client_that_requires_secure_aggregation_never_sends_an_update_in_the_clear() {
    let mut s = Session::new(SessionOptions {
        own_data: Some(OwnFiles::from_dataset(records(40, 0))),
        require_secure_aggregation: true,
        ..Default::default()
    })
    .unwrap();
    // Attack 1: a plain round. Refused before anything is trained (no job, no frame), and
    // for the whole run.
    let (reason, refuses_run) = refusal(&round(&mut s, 1, dp(1.0, 1e-5)));
    assert!(reason.contains("requires secure aggregation"), "{reason}");
    assert!(refuses_run);
    // Attack 2: secure aggregation set up for round 2, then a plain instruction for round 3.
    let out = s
        .on_text(&ServerMessage::SecAggSetup(member_one_of_three(2)).encode())
        .unwrap();
    assert!(
        matches!(
            messages(&out).as_slice(),
            [ClientMessage::SecAggKeys {
                server_round: 2,
                ..
            }]
        ),
        "it joins the secure round with its keys"
    );
    let (reason, _) = refusal(&round(&mut s, 3, dp(1.0, 1e-5)));
    assert!(reason.contains("requires secure aggregation"), "{reason}");
}

#[test]
fn a_secure_round_shares_before_training_and_never_falls_back_to_the_clear() {
    use protocol::secagg::{Bytes32, SecAggSetup};
    use rand::SeedableRng;
    let mut s = Session::new(SessionOptions {
        own_data: Some(OwnFiles::from_dataset(records(40, 0))),
        ..Default::default()
    })
    .unwrap();
    welcome(&mut s);
    let setup = member_one_of_three;
    let out = s
        .on_text(&ServerMessage::SecAggSetup(setup(1)).encode())
        .unwrap();
    assert!(matches!(
        messages(&out).as_slice(),
        [ClientMessage::SecAggKeys { .. }]
    ));
    // The instruction and the model: training waits for this member's shares.
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 1,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    let held = s.on_binary(&model_frame(1, global())).unwrap();
    assert!(held.is_empty(), "no training before the shares: {held:?}");
    // The neighbours' keys arrive: shares go out, then training starts.
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(1);
    let peers = peer_keys(&other_members(Bytes32([1; 32]), &mut rng));
    let out = s
        .on_text(
            &ServerMessage::SecAggPeers {
                server_round: 1,
                peers,
            }
            .encode(),
        )
        .unwrap();
    assert!(matches!(
        messages(&out).as_slice(),
        [ClientMessage::SecAggShares { .. }]
    ));
    let Some(Action::Train(job)) = out.into_iter().last() else {
        panic!("training starts once the shares are out")
    };
    // Trained before the neighbours' envelopes: nothing is sent yet, least of all in the clear.
    let done = s.on_trained(job.run(&mut |_| {}));
    assert!(
        !done
            .iter()
            .any(|a| matches!(a, Action::Send(Outgoing::Binary(_)))),
        "no frame before the envelopes"
    );
    // Attack: a round whose secure aggregation cannot be joined (a cohort of 1) is not sent
    // in the clear either.
    let broken = SecAggSetup {
        members: 1,
        neighbours: vec![],
        ..setup(2)
    };
    let out = s
        .on_text(&ServerMessage::SecAggSetup(broken).encode())
        .unwrap();
    assert!(matches!(
        messages(&out).as_slice(),
        [ClientMessage::TrainFailed { .. }]
    ));
    let (reason, _) = refusal(&round(&mut s, 2, dp(1.0, 1e-5)));
    assert!(reason.contains("not sent in the clear"), "{reason}");
}

/// Member 1 of a secure round of 3, everyone's neighbour (the session differs per round).
fn member_one_of_three(round: u64) -> protocol::secagg::SecAggSetup {
    protocol::secagg::SecAggSetup {
        server_round: round,
        session: protocol::secagg::Bytes32([round as u8; 32]),
        member: 1,
        members: 3,
        threshold: 2,
        neighbours: vec![2, 3],
        clip: 8.0,
        levels: 1 << 22,
        max_weight: 60_000,
        reuse_keys: false,
    }
}

/// Members 2 and 3 of [`member_one_of_three`]'s round with `session`, their keys advertised.
fn other_members(
    session: protocol::secagg::Bytes32,
    rng: &mut rand::rngs::ChaCha20Rng,
) -> Vec<(
    u32,
    secagg::client::Advertised,
    protocol::secagg::MemberKeys,
)> {
    let params = secagg::Params {
        session,
        members: 3,
        threshold: 2,
        vector_len: PARAMS + 1,
    };
    [2u32, 3]
        .iter()
        .map(|&m| {
            let neighbours = [1, 2, 3].into_iter().filter(|&j| j != m).collect();
            let (adv, keys) = secagg::client::Member::new(params.clone(), m, neighbours)
                .unwrap()
                .advertise(rng);
            (m, adv, keys)
        })
        .collect()
}

/// What the server relays to member 1: the others' public keys.
fn peer_keys(
    others: &[(
        u32,
        secagg::client::Advertised,
        protocol::secagg::MemberKeys,
    )],
) -> Vec<protocol::secagg::PeerKeys> {
    others
        .iter()
        .map(|(m, _, keys)| protocol::secagg::PeerKeys {
            member: *m,
            keys: *keys,
        })
        .collect()
}

/// The server's welcome, which tells the session the model's size.
fn welcome(s: &mut Session) {
    let welcome = ServerMessage::Welcome {
        client_id: 1,
        client_key: "k".repeat(32),
        model_params: PARAMS as u64,
        rounds_taken: 0,
        interrupted_round: None,
    };
    s.on_text(&welcome.encode()).unwrap();
}

fn distributed(contributors: u32) -> TrainConfig {
    let mut config = dp(2.0, 1e-5);
    config.dp.as_mut().unwrap().distributed = Some(protocol::config::DistributedNoise {
        scale: 1000.0,
        beta: (-0.5f64).exp(),
        contributors,
    });
    config
}

fn sends_a_frame(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Send(Outgoing::Binary(_))))
}

#[test]
fn distributed_dp_shares_leave_only_masked_in_a_round_of_at_least_t_and_are_unmasked_only_with_t() {
    use protocol::secagg::{Bytes32, SecAggSetup, UnmaskRequest};
    use rand::SeedableRng;
    use std::collections::BTreeMap;
    let mut s = own(40, None);
    welcome(&mut s);
    // Attack 1: a distributed round without secure aggregation. The client's integer sum holds
    // only 1/t of the noise: refused before anything is computed, nothing is sent.
    let out = round(&mut s, 1, distributed(3));
    assert!(!sends_a_frame(&out));
    let (reason, _) = refusal(&out);
    assert!(reason.contains("needs secure aggregation"), "{reason}");
    assert_eq!(s.epsilon(), Some(0.0), "nothing spent");
    // Attack 2: a round of 3 members that counts on 5 contributors (each would add 1/5 of
    // the noise, and 3 shares never make it whole).
    let setup = member_one_of_three;
    let keys_of = |out: &[Action]| match messages(out).as_slice() {
        [ClientMessage::SecAggKeys { keys, .. }] => *keys,
        other => panic!("expected keys, got {other:?}"),
    };
    keys_of(
        &s.on_text(&ServerMessage::SecAggSetup(setup(2)).encode())
            .unwrap(),
    );
    let out = round(&mut s, 2, distributed(5));
    let (reason, _) = refusal(&out);
    assert!(reason.contains("counts on 5 contributors"), "{reason}");
    assert!(reason.contains("3 share holders"), "{reason}");
    assert_eq!(s.epsilon(), Some(0.0), "nothing spent");
    // Attack 3: an honest-looking round of 3 with t = 3, whose server then asks to unmask a
    // sum of 2 (member 3 declared dropped): the reveal is refused.
    let mine = keys_of(
        &s.on_text(&ServerMessage::SecAggSetup(setup(3)).encode())
            .unwrap(),
    );
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(3);
    let others = other_members(Bytes32([3; 32]), &mut rng);
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 3,
        config: distributed(3),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    assert!(s.on_binary(&model_frame(3, global())).unwrap().is_empty());
    let peers = peer_keys(&others);
    let out = s
        .on_text(
            &ServerMessage::SecAggPeers {
                server_round: 3,
                peers,
            }
            .encode(),
        )
        .unwrap();
    let Some(Action::Train(job)) = out.into_iter().last() else {
        panic!("training starts once the shares are out")
    };
    let trained = s.on_trained(job.run(&mut |_| {}));
    assert!(!sends_a_frame(&trained), "no frame before the envelopes");
    // Members 2 and 3 share with member 1 (and each other).
    let mut all_keys: BTreeMap<u32, _> = others.iter().map(|(m, _, k)| (*m, *k)).collect();
    all_keys.insert(1, mine);
    let mut envelopes = Vec::new();
    for (m, adv, _) in others {
        let peers = all_keys
            .iter()
            .filter(|(j, _)| **j != m)
            .map(|(j, k)| (*j, *k))
            .collect();
        let (_, shared) = adv.share(&peers, &mut rng).unwrap();
        envelopes.extend(shared.envelopes.into_iter().filter(|e| e.to == 1));
    }
    let out = s
        .on_text(
            &ServerMessage::SecAggInbox {
                server_round: 3,
                envelopes,
            }
            .encode(),
        )
        .unwrap();
    assert!(
        sends_a_frame(&out),
        "the masked sum goes out: {:?}",
        messages(&out)
    );
    let eps = s.epsilon().unwrap();
    assert!(eps > 0.0, "the step is charged");
    let out = s
        .on_text(
            &ServerMessage::SecAggUnmask {
                server_round: 3,
                request: UnmaskRequest {
                    survivors: vec![1, 2],
                    dropped: vec![3],
                },
            }
            .encode(),
        )
        .unwrap();
    let (reason, _) = refusal(&out);
    assert!(reason.contains("fewer than the 3 contributors"), "{reason}");
    // Attack 4: round 4 is set up, its job starts; the server retries round 4 (a new setup,
    // whose instructions — a smaller z — are not yet sent) and the old job finishes: its sum,
    // computed with the first attempt's noise, is not masked under the second attempt's.
    keys_of(
        &s.on_text(&ServerMessage::SecAggSetup(setup(4)).encode())
            .unwrap(),
    );
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 4,
        config: distributed(3),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    assert!(s.on_binary(&model_frame(4, global())).unwrap().is_empty());
    let peers4 = peer_keys(&other_members(Bytes32([4; 32]), &mut rng));
    let out = s
        .on_text(
            &ServerMessage::SecAggPeers {
                server_round: 4,
                peers: peers4,
            }
            .encode(),
        )
        .unwrap();
    let Some(Action::Train(job)) = out.into_iter().last() else {
        panic!("training starts once the shares are out")
    };
    let retry = SecAggSetup {
        session: Bytes32([44; 32]),
        ..setup(4)
    };
    keys_of(
        &s.on_text(&ServerMessage::SecAggSetup(retry).encode())
            .unwrap(),
    );
    let out = s.on_trained(job.run(&mut |_| {}));
    assert!(!sends_a_frame(&out));
    let (reason, _) = refusal(&out);
    assert!(reason.contains("other instructions"), "{reason}");
}

/// Member 1's (the session's) envelopes, from its `SecAggShares` message.
fn envelopes_from_one(out: &[Action]) -> Vec<protocol::secagg::Envelope> {
    messages(out)
        .into_iter()
        .find_map(|m| match m {
            ClientMessage::SecAggShares { shared, .. } => Some(shared.envelopes),
            _ => None,
        })
        .expect("member 1's shares")
}

/// Members 2 and 3 after sharing: their states and their envelopes for member 1 and each other.
type OthersShared = Vec<(u32, secagg::client::Shared, Vec<protocol::secagg::Envelope>)>;

/// Members 2 and 3 take their envelopes from member 1 and each other, mask, and reveal all
/// three seeds; they keep their keys.
fn others_finish(
    others: OthersShared,
    from_one: Vec<protocol::secagg::Envelope>,
) -> Vec<(u32, secagg::client::Keyed)> {
    let mut all: Vec<_> = others.iter().flat_map(|(_, _, e)| e.clone()).collect();
    all.extend(from_one);
    others
        .into_iter()
        .map(|(m, shared, _)| {
            let inbox: Vec<_> = all.iter().filter(|e| e.to == m).cloned().collect();
            let holding = shared.receive(&inbox).unwrap();
            let (masked, _) = holding
                .mask(&vec![0; PARAMS + 1], &dp(1.0, 1e-5).mask_context())
                .unwrap();
            let all_three = protocol::secagg::UnmaskRequest {
                survivors: vec![1, 2, 3],
                dropped: vec![],
            };
            let (_, kept) = masked.reveal_keeping(&all_three).unwrap();
            (m, kept.expect("every neighbour survived: keys kept"))
        })
        .collect()
}

/// Member 1 (the session) trains round `r` once its shares are out, gets its inbox and sends
/// its masked update.
fn member_one_masks(
    s: &mut Session,
    r: u64,
    shares_out: Vec<Action>,
    inbox: Vec<protocol::secagg::Envelope>,
) {
    let job = shares_out.into_iter().find_map(|a| match a {
        Action::Train(job) => Some(job),
        _ => None,
    });
    let job = job.expect("training starts once the shares are out");
    assert!(!sends_a_frame(&s.on_trained(job.run(&mut |_| {}))));
    let inbox = ServerMessage::SecAggInbox {
        server_round: r,
        envelopes: inbox,
    };
    assert!(sends_a_frame(&s.on_text(&inbox.encode()).unwrap()));
}

/// A whole fresh secure round `r` of three, all surviving: every member keeps its keys.
fn whole_fresh_round(
    s: &mut Session,
    r: u64,
    rng: &mut rand::rngs::ChaCha20Rng,
) -> Vec<(u32, secagg::client::Keyed)> {
    let (others, from_one) = whole_fresh_round_until_masked(s, r, rng);
    let all = protocol::secagg::UnmaskRequest {
        survivors: vec![1, 2, 3],
        dropped: vec![],
    };
    let out = s
        .on_text(
            &ServerMessage::SecAggUnmask {
                server_round: r,
                request: all,
            }
            .encode(),
        )
        .unwrap();
    assert!(matches!(
        messages(&out).as_slice(),
        [ClientMessage::SecAggReveal { .. }]
    ));
    others_finish(others, from_one)
}

/// A fresh secure round `r` of three up to member 1's (the session's) masked update: the other
/// members' states after sharing, and member 1's envelopes.
fn whole_fresh_round_until_masked(
    s: &mut Session,
    r: u64,
    rng: &mut rand::rngs::ChaCha20Rng,
) -> (OthersShared, Vec<protocol::secagg::Envelope>) {
    use protocol::secagg::Bytes32;
    let out = s
        .on_text(&ServerMessage::SecAggSetup(member_one_of_three(r)).encode())
        .unwrap();
    let mine = match messages(&out).as_slice() {
        [ClientMessage::SecAggKeys { keys, .. }] => *keys,
        other => panic!("a fresh round starts with keys: {other:?}"),
    };
    let advertised = other_members(Bytes32([r as u8; 32]), rng);
    let mut keys: std::collections::BTreeMap<u32, _> =
        advertised.iter().map(|(m, _, k)| (*m, *k)).collect();
    keys.insert(1, mine);
    let others: OthersShared = advertised
        .into_iter()
        .map(|(m, adv, _)| {
            let peers = keys
                .iter()
                .filter(|(j, _)| **j != m)
                .map(|(j, k)| (*j, *k))
                .collect();
            let (shared, msg) = adv.share(&peers, rng).unwrap();
            (m, shared, msg.envelopes)
        })
        .collect();
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: r,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    assert!(s.on_binary(&model_frame(r, global())).unwrap().is_empty());
    let peers = ServerMessage::SecAggPeers {
        server_round: r,
        peers: keys
            .iter()
            .filter(|(m, _)| **m != 1)
            .map(|(m, k)| protocol::secagg::PeerKeys {
                member: *m,
                keys: *k,
            })
            .collect(),
    };
    let shares_out = s.on_text(&peers.encode()).unwrap();
    let from_one = envelopes_from_one(&shares_out);
    let inbox = others
        .iter()
        .flat_map(|(_, _, e)| e.iter().filter(|e| e.to == 1).cloned())
        .collect();
    member_one_masks(s, r, shares_out, inbox);
    (others, from_one)
}

#[test]
fn keys_reused_across_rounds_never_let_a_server_unmask_an_earlier_round() {
    use protocol::secagg::{Bytes32, SecAggSetup, UnmaskRequest};
    use rand::SeedableRng;
    let mut rng = rand::rngs::ChaCha20Rng::seed_from_u64(9);
    let mut s = own(40, None);
    welcome(&mut s);
    let reuse = |r: u64, session: u8| SecAggSetup {
        session: Bytes32([session; 32]),
        reuse_keys: true,
        ..member_one_of_three(r)
    };
    // Attack 1: keys resumed under the session they already served in (round 1's): the
    // pairwise masks would repeat, and two rounds' masked vectors give their difference.
    whole_fresh_round(&mut s, 1, &mut rng);
    let out = s
        .on_text(&ServerMessage::SecAggSetup(reuse(2, 1)).encode())
        .unwrap();
    let (reason, _) = refusal(&out);
    assert!(reason.contains("already served"), "{reason}");
    // Attack 2: a reuse after that refusal: the client kept no keys (and makes none up).
    let out = s
        .on_text(&ServerMessage::SecAggSetup(reuse(3, 3)).encode())
        .unwrap();
    let (reason, _) = refusal(&out);
    assert!(reason.contains("kept none"), "{reason}");
    // Attack 3: a reuse while the last round is not over (masked, never asked to reveal): its
    // keys were never handed back for reuse.
    whole_fresh_round_until_masked(&mut s, 4, &mut rng);
    let out = s
        .on_text(&ServerMessage::SecAggSetup(reuse(5, 5)).encode())
        .unwrap();
    let (reason, _) = refusal(&out);
    assert!(reason.contains("kept none"), "{reason}");
    // A fresh round, then an honest reuse: no key step, the shares go out at once.
    let others = whole_fresh_round(&mut s, 4, &mut rng);
    let out = s
        .on_text(&ServerMessage::SecAggSetup(reuse(5, 5)).encode())
        .unwrap();
    assert!(
        matches!(
            messages(&out).as_slice(),
            [ClientMessage::SecAggShares { .. }]
        ),
        "{:?}",
        messages(&out)
    );
    let params = secagg::Params {
        session: Bytes32([5; 32]),
        members: 3,
        threshold: 2,
        vector_len: PARAMS + 1,
    };
    let inbox = others
        .into_iter()
        .flat_map(|(m, keyed)| {
            let ns = [1, 2, 3].into_iter().filter(|&j| j != m).collect();
            let (_, msg) = keyed.resume(params.clone(), m, ns, &mut rng).unwrap();
            msg.envelopes.into_iter().filter(|e| e.to == 1)
        })
        .collect();
    let ins = ServerMessage::TrainIns {
        task: MNIST.spec(),
        server_round: 5,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    let training = s.on_binary(&model_frame(5, global())).unwrap();
    // Attack 4: member 3 "dropped": its masking secret would unmask its round-4 vector (whose
    // seed this client revealed). Refused.
    let greedy = UnmaskRequest {
        survivors: vec![1, 2],
        dropped: vec![3],
    };
    member_one_masks(&mut s, 5, training, inbox);
    let unmask = ServerMessage::SecAggUnmask {
        server_round: 5,
        request: greedy,
    };
    let out = s.on_text(&unmask.encode()).unwrap();
    let (reason, _) = refusal(&out);
    assert!(reason.contains("reuses keys"), "{reason}");
}

/// A server that sends a model of a task this page does not know, or of a known task laid out
/// otherwise (an older or newer server), is refused before anything is trained: the client
/// says it refuses the run, and says to reload the page. Its ledger is not touched.
#[test]
fn a_model_of_another_task_or_layout_is_refused_before_training() {
    let cases = [
        TaskSpec {
            id: "cifar-10".into(),
            ..MNIST.spec()
        },
        TaskSpec {
            model_signature: "0000000000000000".into(),
            ..FASHION_MNIST.spec()
        },
        TaskSpec {
            model_params: 99,
            ..MNIST.spec()
        },
    ];
    for task in cases {
        let mut s = own(600, Some(3.0));
        let ins = ServerMessage::TrainIns {
            task: task.clone(),
            server_round: 1,
            config: dp(1.0, 1e-5),
            timeout_ms: 1000,
        };
        assert!(s.on_text(&ins.encode()).unwrap().is_empty());
        let out = s.on_binary(&model_frame(1, global())).unwrap();
        assert!(
            !out.iter().any(|a| matches!(a, Action::Train(_))),
            "{task:?}: nothing trained"
        );
        let (reason, refuses_run) = refusal(&out);
        assert!(refuses_run, "{task:?}");
        assert!(reason.contains("reload the page"), "{task:?}: {reason}");
        assert_eq!(s.epsilon(), Some(0.0), "{task:?}: nothing spent");
        // A model of the run's task (the same layout) trains and its update is sent.
        let sent = messages(&round(&mut s, 2, dp(1.0, 1e-5)));
        assert!(
            matches!(sent.as_slice(), [ClientMessage::TrainRes { .. }]),
            "{sent:?}"
        );
    }
}

/// A run of a task this page does not know is said as soon as the run's state arrives, before
/// any round, with what to do; a known one is passed on for the page to name.
#[test]
fn a_run_of_an_unknown_task_is_said_before_any_round() {
    let mut s = own(600, Some(3.0));
    let state = |task: TaskSpec| ServerMessage::RunState {
        run_id: 1,
        task,
        phase: protocol::messages::RunPhase::Running,
    };
    let unknown = TaskSpec {
        id: "cifar-10".into(),
        ..MNIST.spec()
    };
    let out = s.on_text(&state(unknown.clone()).encode()).unwrap();
    let said: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Notify(Notice::ServerError { message, fatal, .. }) => Some((message, fatal)),
            _ => None,
        })
        .collect();
    assert!(
        matches!(said.as_slice(), [(m, false)] if m.contains("does not know") && m.contains("reload the page")),
        "{out:?}"
    );
    assert!(
        out.iter().any(
            |a| matches!(a, Action::Notify(Notice::RunState { task, .. }) if *task == unknown)
        )
    );
    // Said once a run: not again at the next phase change, nor with the run's assignment
    // (whose shard is not fetched).
    let out = s.on_text(&state(unknown.clone()).encode()).unwrap();
    assert!(
        matches!(out.as_slice(), [Action::Notify(Notice::RunState { .. })]),
        "{out:?}"
    );
    let (assignment, _, _) = shard(1, &records(60, 1));
    let assignment = assignment.replace(r#""id":"mnist""#, r#""id":"cifar-10""#);
    assert!(assignment.contains("cifar-10"), "{assignment}");
    assert!(s.on_text(&assignment).unwrap().is_empty());
    // Another run of it is said again.
    let again = ServerMessage::RunState {
        run_id: 2,
        task: unknown.clone(),
        phase: protocol::messages::RunPhase::Running,
    };
    assert_eq!(s.on_text(&again.encode()).unwrap().len(), 2);
    let out = s.on_text(&state(FASHION_MNIST.spec()).encode()).unwrap();
    assert!(
        matches!(out.as_slice(), [Action::Notify(Notice::RunState { task, .. })] if *task == FASHION_MNIST.spec()),
        "{out:?}"
    );
    assert_eq!(s.epsilon(), Some(0.0));
}

/// A client holding an MNIST shard is never made to train or evaluate a model of another
/// (known, same-layout) task on it.
#[test]
fn a_model_of_another_task_than_the_shards_is_refused() {
    let data = records(60, 1);
    let (assignment, images, labels) = shard(1, &data);
    let mut s = shard_session(Vec::new(), None);
    s.on_text(&assignment).unwrap();
    s.on_shard(&images, &labels).unwrap();
    let ins = ServerMessage::TrainIns {
        task: FASHION_MNIST.spec(),
        server_round: 1,
        config: dp(1.0, 1e-5),
        timeout_ms: 1000,
    };
    assert!(s.on_text(&ins.encode()).unwrap().is_empty());
    let out = s.on_binary(&model_frame(1, global())).unwrap();
    let (reason, refuses_run) = refusal(&out);
    assert!(refuses_run && reason.contains("shard"), "{reason}");
    let eval = ServerMessage::EvaluateIns {
        server_round: 1,
        task: FASHION_MNIST.spec(),
    };
    assert!(s.on_text(&eval.encode()).unwrap().is_empty());
    let out = s.on_binary(&model_frame(1, global())).unwrap();
    assert!(
        !out.iter().any(|a| matches!(a, Action::Evaluate(_))),
        "{out:?}"
    );
}
