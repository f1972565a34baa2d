//! A mutation fuzzer on stable Rust for every decoder a peer reaches. `cargo fuzz` needs a
//! nightly compiler and this project builds on one pinned stable toolchain, so this is the
//! simple kind: start from valid encodings, mutate them (bytes, and JSON values for the JSON
//! decoders), decode, and count panics. Every target also checks what a successful decode
//! promises (bounds hold, a re-encoding decodes to the same value), so a decoder that quietly
//! accepts what it should refuse fails too.
//!
//! `cargo run -p fuzz --release -- --inputs 10000000` runs a campaign (BENCHMARKS.md); the
//! crate's test runs a short one in CI.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use protocol::admin::{AggregatorConfig, RunConfig};
use protocol::config::{Batching, DpSgdConfig, Optimizer, TrainConfig};
use protocol::ledger::{self, DatasetLedger, LedgerSlot};
use protocol::messages::{Capabilities, MAX_NUM_EXAMPLES, OwnData};
use protocol::secagg::{ENVELOPE_BYTES, MAX_NEIGHBOURS, SHARE_BYTES};
use protocol::worker::{JoinRequest, PageToWorker, SavedClient, WorkerToPage};
use protocol::{ClientMessage, FrameKind, ResultFrame, ServerMessage, TensorFrame};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub seeds: Vec<Vec<u8>>,
    /// JSON text: also mutated as JSON values, not only as bytes.
    pub json: bool,
    /// Decodes `input` and checks its promises; panics when one is broken.
    pub run: fn(&[u8]),
}

/// What a campaign found for one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub name: &'static str,
    pub inputs: u64,
    pub panics: u64,
    pub seconds: f64,
    /// The first input that panicked, escaped (to reproduce it).
    pub first_panic: Option<String>,
}

fn text(input: &[u8]) -> String {
    // Text frames are UTF-8 (the WebSocket layer refuses anything else).
    String::from_utf8_lossy(input).into_owned()
}

fn client_message(input: &[u8]) {
    let Ok(msg) = ClientMessage::decode(&text(input)) else {
        return;
    };
    match &msg {
        ClientMessage::Hello { capabilities, .. } => {
            if let Some(own) = &capabilities.own_data {
                assert!((1..=MAX_NUM_EXAMPLES).contains(&own.num_examples));
            }
            if let Some(cap) = capabilities.epsilon_cap {
                assert!(cap > 0.0 && cap.is_finite());
            }
        }
        ClientMessage::TrainRes { num_examples, .. } => {
            assert!((1..=MAX_NUM_EXAMPLES).contains(num_examples))
        }
        ClientMessage::EvaluateRes { loss, accuracy, .. } => {
            assert!(loss.is_finite() && (0.0..=1.0).contains(accuracy))
        }
        ClientMessage::TrainFailed { .. } | ClientMessage::SecAggKeys { .. } => {}
        ClientMessage::SecAggShares { shared, .. } => {
            assert!(shared.envelopes.len() <= MAX_NEIGHBOURS as usize);
            assert!(
                shared
                    .envelopes
                    .iter()
                    .all(|e| e.ciphertext.len() == ENVELOPE_BYTES)
            );
        }
        ClientMessage::SecAggReveal { reveal, .. } => {
            for list in [&reveal.seeds, &reveal.masking_keys] {
                assert!(list.len() <= MAX_NEIGHBOURS as usize + 1);
                assert!(list.iter().all(|r| r.share.len() == SHARE_BYTES));
            }
        }
    }
    assert_eq!(ClientMessage::decode(&msg.encode()).ok(), Some(msg));
}

/// For messages whose decoding is not promised to round-trip: a re-encoding that decodes must
/// say the same (NaN travels as null, so encodings are compared, not values).
fn reencodes_the_same<T, E>(
    input: &[u8],
    decode: impl Fn(&str) -> Result<T, E>,
    encode: impl Fn(&T) -> String,
) {
    if let Ok(msg) = decode(&text(input))
        && let Ok(again) = decode(&encode(&msg))
    {
        assert_eq!(encode(&again), encode(&msg));
    }
}

fn server_message(input: &[u8]) {
    // The client only decodes these; a value outside f32 (a σ of 1e308) decodes as ±∞ and is
    // refused by `TrainConfig::validate` before training, so no round trip is promised.
    reencodes_the_same(input, ServerMessage::decode, ServerMessage::encode);
}

fn tensor_frame(input: &[u8]) {
    match ResultFrame::decode(input) {
        Ok(ResultFrame::Tensor(frame)) => {
            let bytes = frame.encode().expect("a decoded frame encodes");
            assert_eq!(bytes, input, "a frame has one encoding");
        }
        Ok(ResultFrame::Masked(frame)) => {
            let bytes = frame.encode().expect("a decoded frame encodes");
            assert_eq!(bytes, input, "a masked frame has one encoding");
        }
        Err(_) => {}
    }
}

fn run_config(input: &[u8]) {
    if let Ok(config) = RunConfig::from_json(&text(input)) {
        config.validate().expect("from_json validates");
    }
}

/// The aggregation rules on updates a peer chose: the input is a rule, weights and f32 values
/// (the socket handler only promises the right length and finite values). Whatever they are, a
/// rule takes or refuses each update and its aggregate is either refused or finite.
fn aggregators(input: &[u8]) {
    const DIMS: usize = 3;
    let Some((&rule, rest)) = input.split_first() else {
        return;
    };
    let config = match rule % 5 {
        0 => AggregatorConfig::FedAvg,
        1 => AggregatorConfig::NormBound {
            bound: (rule & 0x80 != 0).then_some(1.0),
        },
        2 => AggregatorConfig::Median,
        3 => AggregatorConfig::TrimmedMean { trim: 0.2 },
        _ => AggregatorConfig::MultiKrum {
            byzantine: u32::from(rule >> 6),
            keep: (rule & 0x20 != 0).then_some(2),
        },
    };
    let mut agg = learning::aggregate::build(&config, DIMS);
    for chunk in rest.chunks_exact(2 + 4 * DIMS) {
        let weight = u64::from(u16::from_le_bytes([chunk[0], chunk[1]])) * 1000;
        let update: Vec<f32> = chunk[2..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let _ = agg.add(&update, weight);
    }
    if let Ok(next) = agg.apply(&[0.0; DIMS]) {
        assert!(next.iter().all(|v| v.is_finite()), "{config:?}: {next:?}");
    }
}

fn page_to_worker(input: &[u8]) {
    if let Ok(msg) = PageToWorker::decode(&text(input)) {
        assert_eq!(PageToWorker::decode(&msg.encode()).ok(), Some(msg));
    }
}

fn worker_to_page(input: &[u8]) {
    reencodes_the_same(input, WorkerToPage::decode, WorkerToPage::encode);
}

fn stored_ledger(input: &[u8]) {
    let fingerprint = ledger::fingerprint(b"fuzz images", b"fuzz labels");
    if let LedgerSlot::Known(l) = LedgerSlot::from_stored(&fingerprint, &text(input)) {
        assert!(l.history.len() <= ledger::MAX_HISTORY);
        assert!(
            l.history
                .iter()
                .all(|&(q, s, n)| q > 0.0 && q <= 1.0 && s > 0.0 && n > 0)
        );
    }
}

/// The first two bytes say where the images file ends and the labels file begins.
fn idx_files(input: &[u8]) {
    let Some((split, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let at = (u16::from_le_bytes(*split) as usize).min(rest.len());
    let (images, labels) = rest.split_at(at);
    let fingerprint = ledger::fingerprint(images, labels);
    if let Ok(d) = learning::Dataset::from_idx("images", images, "labels", labels) {
        assert_eq!(d.images.len(), d.len() * 784);
        assert_eq!(fingerprint.len(), 64);
    }
}

/// A bus message as the bridge (`Up`) or a relay (`Down`) reads it: the header's length
/// bounded, a batch's frames each decoded with the same bounds, a payload read as the vector
/// it claims to be, never more values than asked for.
fn bus_message<T: for<'de> serde::Deserialize<'de>>(input: &[u8], is_batch: fn(&T) -> bool) {
    use server::bus;
    let Ok((header, payload)) = bus::decode::<T>(input) else {
        return;
    };
    assert!(input.len() - payload.len() <= 4 + bus::MAX_HEADER);
    if is_batch(&header) {
        for item in bus::unbatch::<T>(payload, is_batch) {
            let Ok((_, inner)) = item else { break };
            assert!(inner.len() <= payload.len());
        }
    } else {
        if let Ok(values) = bus::f64s(payload, 16) {
            assert!(values.len() <= 16 && values.len() * 8 == payload.len());
        }
        if let Ok(words) = bus::words(payload, 16) {
            assert!(words.count() <= 16);
        }
    }
}

fn bus_up(input: &[u8]) {
    bus_message::<server::bus::Up>(input, |m| matches!(m, server::bus::Up::Batch { .. }));
}

fn bus_down(input: &[u8]) {
    bus_message::<server::bus::Down>(input, |m| matches!(m, server::bus::Down::Batch { .. }));
}

/// Valid bus messages of each direction: single ones with and without payload, and a batch.
fn bus_seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    use server::bus::{Batch, Down, Up, encode, f32s_to_bytes, f64s_to_bytes};
    use server::coordinator::{RoundRef, VectorKind};
    let round = RoundRef {
        run_id: 1,
        server_round: 2,
        attempt: 1,
    };
    let (n, frames) = Batch::framed(&[
        encode(
            &Up::HeldMany {
                server_round: 2,
                kind: VectorKind::Masked,
                clients: vec![(1, 60), (2, 61)],
            },
            &[],
        ),
        encode(
            &Up::Leaves {
                clients: vec![3, 4],
            },
            &[],
        ),
    ]);
    let up = vec![
        encode(&Up::Batch { messages: n }, &frames),
        encode(
            &Up::Join {
                conn: 7,
                client_key: Some("0123456789abcdef0123456789abcdef".into()),
                capabilities: Capabilities::default(),
            },
            &[],
        ),
        encode(
            &Up::TrainRes {
                client_id: 1,
                server_round: 2,
                num_examples: 6,
            },
            &f32s_to_bytes(&[0.5, -1.0, 2.0]),
        ),
        encode(
            &Up::Partial {
                round,
                kind: VectorKind::Update,
                clients: vec![1, 2],
                total_weight: 12,
                count: 2,
            },
            &f64s_to_bytes(&[3.0, -6.0]),
        ),
    ];
    let (n, frames) = Batch::framed(&[
        encode(
            &Down::Texts {
                clients: vec![1, 2],
                text: "{\"type\":\"round_closed\"}".into(),
            },
            &[],
        ),
        encode(
            &Down::Accepts {
                round,
                kind: VectorKind::Update,
                clients: vec![(1, 6)],
            },
            &[],
        ),
        encode(
            &Down::SendModels {
                model: 9,
                clients: vec![1],
            },
            &[],
        ),
    ]);
    let down = vec![
        encode(&Down::Batch { messages: n }, &frames),
        encode(
            &Down::Joined {
                conn: 7,
                epoch: 11,
                result: Ok(1),
            },
            &[],
        ),
        encode(&Down::Model { model: 9 }, &[1, 2, 3, 4, 5, 6, 7, 8]),
        encode(&Down::Collect { round }, &[]),
    ];
    let to_vecs = |v: Vec<bytes::Bytes>| v.into_iter().map(|b| b.to_vec()).collect();
    (to_vecs(up), to_vecs(down))
}

/// Every decoder a peer reaches, with valid seeds.
pub fn targets() -> Vec<Target> {
    let train = TrainConfig {
        local_epochs: 2,
        batching: Batching::SampleRate(0.05),
        learning_rate: 0.5,
        optimizer: Optimizer::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        },
        dp: Some(DpSgdConfig {
            max_grad_norm: 1.0,
            noise_multiplier: 1.1,
            delta: 1e-5,
            distributed: None,
        }),
    };
    let client = [
        ClientMessage::Hello {
            protocol_version: protocol::PROTOCOL_VERSION,
            client_key: Some("0123456789abcdef0123456789abcdef".into()),
            capabilities: Capabilities {
                name: "fuzz".into(),
                own_data: Some(OwnData { num_examples: 6000 }),
                epsilon_cap: Some(3.0),
                delta: Some(1e-6),
                can_evaluate: true,
                require_secure_aggregation: true,
            },
        },
        ClientMessage::TrainRes {
            server_round: 3,
            num_examples: 6000,
            steps: 12,
        },
        ClientMessage::TrainFailed {
            server_round: 2,
            reason: "past its own ε cap of 3".into(),
            refuses_run: true,
        },
        ClientMessage::EvaluateRes {
            server_round: 1,
            num_examples: 100,
            loss: 0.3,
            accuracy: 0.9,
        },
    ];
    let server = [
        ServerMessage::TrainIns {
            server_round: 1,
            task: learning::task::MNIST.spec(),
            config: train,
            timeout_ms: 1000,
        },
        ServerMessage::RoundClosed {
            server_round: 1,
            test_accuracy: 0.9,
            test_loss: f64::NAN,
            participants: 3,
            epsilon: Some(1.5),
        },
        ServerMessage::error(protocol::ErrorCode::Replaced, "replaced"),
    ];
    let frame = TensorFrame {
        kind: FrameKind::Update,
        server_round: 7,
        values: vec![0.5, -1.0, 3.0e38, 0.0],
    };
    let ledger_text = ledger::seal(&DatasetLedger {
        fingerprint: ledger::fingerprint(b"fuzz images", b"fuzz labels"),
        history: vec![(7.0 / 60.0, 1.1, 12), (1.0, 50.0, 2)],
        unprotected_rounds: 0,
        skellam: vec![ledger::SkellamEntry {
            mechanism: ledger::SkellamMechanism {
                sample_rate: 0.034,
                noise_multiplier: 2.6,
                scale: 1000.0,
                dim: 12_810,
                beta: 0.6,
                contributors: 7,
            },
            steps: 40,
        }],
    })
    .unwrap_or_default();
    let page = PageToWorker::Join(JoinRequest {
        servers: vec!["ws://127.0.0.1:3000/ws".into()],
        name: "tab".into(),
        epsilon_cap: Some(3.0),
        delta: None,
        own_data: false,
        resume: Some(SavedClient {
            client_key: Some("ab".into()),
        }),
        ledgers: vec![LedgerSlot::Unreadable {
            fingerprint: "ab".into(),
            reason: "checksum".into(),
        }],
        require_secure_aggregation: false,
        workers: Some(2),
    });
    let idx = {
        let data = learning::Dataset {
            images: (0..3 * 784).map(|i| (i % 251) as u8).collect(),
            labels: vec![1, 2, 3],
        };
        let (images, labels) = learning::data::to_idx(&data);
        let mut input = (images.len() as u16).to_le_bytes().to_vec();
        input.extend(images);
        input.extend(labels);
        input
    };
    let bytes = |v: Vec<String>| v.into_iter().map(String::into_bytes).collect();
    let (bus_up_seeds, bus_down_seeds) = bus_seeds();
    vec![
        Target {
            name: "bus message, gateway to coordinator",
            seeds: bus_up_seeds,
            json: false,
            run: bus_up,
        },
        Target {
            name: "bus message, coordinator to gateway",
            seeds: bus_down_seeds,
            json: false,
            run: bus_down,
        },
        Target {
            name: "client message",
            seeds: bytes(client.iter().map(ClientMessage::encode).collect()),
            json: true,
            run: client_message,
        },
        Target {
            name: "server message",
            seeds: bytes(server.iter().map(ServerMessage::encode).collect()),
            json: true,
            run: server_message,
        },
        Target {
            name: "tensor frame",
            seeds: vec![frame.encode().unwrap_or_default()],
            json: false,
            run: tensor_frame,
        },
        Target {
            name: "run config",
            seeds: bytes(vec![
                "{}".into(),
                r#"{"name":"x","rounds":3,"batching":{"sample_rate":0.01},"dp":{"max_grad_norm":1,"noise_multiplier":1.1,"delta":1e-5},"shards":{"scheme":{"kind":"dirichlet","alpha":0.5},"num_shards":10,"seed":1}}"#.into(),
                r#"{"min_clients":9,"aggregator":{"kind":"multi_krum","byzantine":3,"keep":4}}"#.into(),
                r#"{"aggregator":{"kind":"norm_bound","bound":2.5}}"#.into(),
                r#"{"aggregator":{"kind":"trimmed_mean","trim":0.2}}"#.into(),
            ]),
            json: true,
            run: run_config,
        },
        Target {
            name: "aggregators",
            seeds: (0u8..5)
                .map(|rule| {
                    let mut input = vec![rule];
                    for i in 0..7u8 {
                        input.extend(u16::from(i % 3 + 1).to_le_bytes());
                        for v in [0.5f32, -1.0, 3.0e38] {
                            input.extend((v * f32::from(i)).to_le_bytes());
                        }
                    }
                    input
                })
                .collect(),
            json: false,
            run: aggregators,
        },
        Target {
            name: "page to worker",
            seeds: bytes(vec![page.encode(), PageToWorker::Saved { seq: 3 }.encode()]),
            json: true,
            run: page_to_worker,
        },
        Target {
            name: "worker to page",
            seeds: bytes(vec![
                WorkerToPage::Save {
                    seq: 1,
                    client: SavedClient::default(),
                    spent: None,
                }
                .encode(),
                WorkerToPage::RoundClosed {
                    server_round: 1,
                    test_accuracy: 0.5,
                }
                .encode(),
            ]),
            json: true,
            run: worker_to_page,
        },
        Target {
            name: "stored ledger",
            seeds: vec![ledger_text.into_bytes()],
            json: true,
            run: stored_ledger,
        },
        Target {
            name: "IDX files",
            seeds: vec![idx],
            json: false,
            run: idx_files,
        },
    ]
}

/// Values a JSON leaf is replaced with: limits, wrong types, huge and tiny numbers.
const JSON_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "1e308",
    "-1e308",
    "5e-324",
    "1e-300",
    "0.5",
    "18446744073709551615",
    "18446744073709533616",
    "4294967296",
    "null",
    "true",
    "\"\"",
    "\"inf\"",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"\\u202e\"",
    "99999999999999999999999",
];

/// Bytes a mutation likes to write.
const BYTES: &[u8] = b"\0\xff\x7f\x80\"{}[],:-.e9\\";

fn mutate_bytes(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = input.len();
    match rng.random_range(0..7u8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8u8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = BYTES[rng.random_range(0..BYTES.len())];
        }
        2 => {
            let i = rng.random_range(0..=len);
            input.insert(i, rng.random());
        }
        3 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=16)).min(len);
            input.drain(a..b);
        }
        4 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=64)).min(len);
            let chunk = input[a..b].to_vec();
            let at = rng.random_range(0..=input.len());
            input.splice(at..at, chunk);
        }
        5 if !others.is_empty() => {
            let other = &others[rng.random_range(0..others.len())];
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        _ if len >= 4 => {
            // A little-endian field set to an extreme.
            let i = rng.random_range(0..len - 3);
            let v: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 0x8000_0000][rng.random_range(0..5)];
            input[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ => input.push(rng.random()),
    }
}

/// Replaces one leaf (or object value) of a JSON document with an extreme value.
fn mutate_json(rng: &mut ChaCha8Rng, input: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(input).ok()?;
    let mut slots = Vec::new();
    collect_slots(&value, &mut Vec::new(), &mut slots);
    if slots.is_empty() {
        return None;
    }
    let path = &slots[rng.random_range(0..slots.len())];
    let replacement: Value =
        serde_json::from_str(JSON_VALUES[rng.random_range(0..JSON_VALUES.len())]).ok()?;
    let mut at = &mut value;
    for step in path {
        at = match step {
            Step::Key(k) => at.get_mut(k)?,
            Step::Index(i) => at.get_mut(*i)?,
        };
    }
    *at = replacement;
    serde_json::to_vec(&value).ok()
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn collect_slots(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(Step::Key(k.clone()));
                out.push(path.clone());
                collect_slots(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                out.push(path.clone());
                collect_slots(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Runs `inputs` mutated inputs through `target`, from a fixed `seed`.
pub fn fuzz(target: &Target, inputs: u64, seed: u64) -> TargetReport {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut panics = 0;
    let mut first_panic = None;
    for _ in 0..inputs {
        let seed_input = &target.seeds[rng.random_range(0..target.seeds.len())];
        let mut input = if target.json && rng.random_bool(0.5) {
            mutate_json(&mut rng, seed_input).unwrap_or_else(|| seed_input.clone())
        } else {
            seed_input.clone()
        };
        for _ in 0..rng.random_range(1..=4u8) {
            if target.json && rng.random_bool(0.5) && input != *seed_input {
                break; // a JSON-level mutation alone reaches the validators
            }
            mutate_bytes(&mut rng, &mut input, &target.seeds);
        }
        if catch_unwind(AssertUnwindSafe(|| (target.run)(&input))).is_err() {
            panics += 1;
            first_panic.get_or_insert_with(|| input.escape_ascii().to_string());
        }
    }
    TargetReport {
        name: target.name,
        inputs,
        panics,
        seconds: start.elapsed().as_secs_f64(),
        first_panic,
    }
}

/// Silences the default panic message while fuzzing (panics are counted and reported).
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}
