//! The client's wasm side, run inside a real dedicated Web Worker in Chromium
//! (`wasm-bindgen-test-runner` with ChromeDriver; `scripts/test.sh` runs it):
//!
//!   cargo test --release --target wasm32-unknown-unknown -p client-wasm \
//!     --no-default-features --features browser --test worker
//!
//! What only the browser can show: the OS randomness DP noise needs (`crypto.getRandomValues`
//! in a worker), a whole DP-SGD round of the session in wasm with its saved ledger, IDX parsing
//! of user files, and the page ↔ worker message encoding. (The worker's socket loop is exercised
//! by the browser end-to-end test: reconnects, backoff, reloads, a server restart.)
#![cfg(target_arch = "wasm32")]

use std::sync::Arc;

use client_wasm::session::{Action, Outgoing, OwnFiles, Session, SessionOptions};
use learning::{Batching, Dataset, TrainConfig};
use protocol::ledger::{LedgerSlot, fingerprint, seal};
use protocol::worker::{PageToWorker, WorkerToPage};
use protocol::{ClientMessage, FrameKind, ServerMessage, TensorFrame};
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

fn idx_images(n: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..n * 784).map(|i| (i * 7 % 256) as u8));
    b
}

fn idx_labels(n: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(n as u32).to_be_bytes());
    b.extend((0..n).map(|i| (i % 10) as u8));
    b
}

#[wasm_bindgen_test]
fn os_randomness_for_dp_noise_is_there_in_a_worker() {
    assert!(
        js_sys::global()
            .dyn_into::<web_sys::DedicatedWorkerGlobalScope>()
            .is_ok(),
        "runs in a dedicated worker"
    );
    let mut a = learning::dpsgd::SecureRng::from_os().expect("crypto.getRandomValues");
    let mut b = learning::dpsgd::SecureRng::from_os().expect("crypto.getRandomValues");
    let draws = |r: &mut learning::dpsgd::SecureRng| (0..8).map(|_| r.normal()).collect::<Vec<_>>();
    let (x, y) = (draws(&mut a), draws(&mut b));
    assert_ne!(x, y, "two OS-keyed generators differ");
    assert!(x.iter().all(|v| v.is_finite()));
}

#[wasm_bindgen_test]
fn own_idx_files_load_and_bad_ones_are_named() {
    let d = Dataset::from_idx(
        "images file",
        &idx_images(30),
        "labels file",
        &idx_labels(30),
    )
    .expect("valid IDX");
    assert_eq!(d.len(), 30);
    assert_eq!(d.label_histogram(), [3; 10]);
    let err = Dataset::from_idx("images file", b"junk", "labels file", &idx_labels(30))
        .expect_err("junk is refused")
        .to_string();
    assert!(err.contains("images file"), "{err}");
    let err = Dataset::from_idx(
        "images file",
        &idx_images(30),
        "labels file",
        &idx_labels(29),
    )
    .expect_err("counts differ")
    .to_string();
    assert!(err.contains("29") && err.contains("30"), "{err}");
}

#[wasm_bindgen_test]
fn a_dp_round_trains_in_wasm_and_its_ledger_is_saved() {
    let (images, labels) = (idx_images(40), idx_labels(40));
    let data = OwnFiles {
        data: Arc::new(Dataset::from_idx("images", &images, "labels", &labels).unwrap()),
        fingerprint: fingerprint(&images, &labels),
    };
    let mut s = Session::new(SessionOptions {
        name: "worker-test".into(),
        own_data: Some(data.clone()),
        epsilon_cap: Some(50.0),
        ..Default::default()
    })
    .unwrap();
    s.on_text(
        &ServerMessage::Welcome {
            client_id: 1,
            client_key: "k".repeat(32),
            model_params: 12_810,
            rounds_taken: 0,
            interrupted_round: None,
        }
        .encode(),
    )
    .unwrap();
    let config = TrainConfig {
        batching: Batching::BatchSize(10),
        ..TrainConfig::default()
    };
    s.on_text(
        &ServerMessage::TrainIns {
            server_round: 1,
            task: learning::task::MNIST.spec(),
            config,
            timeout_ms: 60_000,
        }
        .encode(),
    )
    .unwrap();
    let global = learning::TinyCnnConfig::new()
        .init(&burn::tensor::Device::flex())
        .to_flat();
    let frame = TensorFrame {
        kind: FrameKind::GlobalModel,
        server_round: 1,
        values: global,
    }
    .encode()
    .unwrap();
    let Some(Action::Train(job)) = s.on_binary(&frame).unwrap().pop() else {
        panic!("expected a train job")
    };
    let mut steps = 0;
    let done = job.run(&mut |_| steps += 1);
    assert_eq!(steps, 4, "40 examples, expected batch 10: 4 Poisson steps");
    let out = s.on_trained(done);
    let Some(Action::Send(Outgoing::Text(res))) = out.first() else {
        panic!("{out:?}")
    };
    assert!(
        matches!(
            ClientMessage::decode(res).unwrap(),
            ClientMessage::TrainRes { .. }
        ),
        "{res}"
    );
    let eps = s.epsilon().expect("a ledger");
    assert!(eps > 0.0 && eps <= 50.0, "{eps}");
    let Some(Action::Send(Outgoing::Binary(update))) = out.get(1) else {
        panic!("{out:?}")
    };
    let update = TensorFrame::decode(update).unwrap();
    assert!(update.values.iter().all(|v| v.is_finite()));
    assert!(
        update.values.iter().any(|v| *v != 0.0),
        "noise moved the model"
    );
    // A reloaded tab (or a new one) resumes with what the page stored: the key, and the ledger
    // of these files as sealed in localStorage.
    let saved = s.saved();
    assert_eq!(saved.client_key.as_deref(), Some("k".repeat(32).as_str()));
    let stored = seal(
        &s.ledger_of(&data.fingerprint)
            .expect("a ledger for the files"),
    )
    .unwrap();
    let resumed = Session::new(SessionOptions {
        resume: Some(saved),
        ledgers: vec![LedgerSlot::from_stored(&data.fingerprint, &stored)],
        own_data: Some(data),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(resumed.spent(), s.spent());
    assert!(
        resumed
            .spent()
            .is_some_and(|p| p.epsilon.unwrap() > 0.0 && p.delta == 1e-5)
    );
}

#[wasm_bindgen_test]
fn page_and_worker_messages_round_trip() {
    let msg = PageToWorker::Leave;
    assert_eq!(PageToWorker::decode(&msg.encode()).unwrap(), msg);
    let ev = WorkerToPage::Progress {
        server_round: 2,
        epoch: 1,
        epochs: 1,
        step: 3,
        steps_per_epoch: 12,
        batch_loss: 0.25,
        samples_per_second: Some(2500.0),
    };
    assert_eq!(WorkerToPage::decode(&ev.encode()).unwrap(), ev);
    assert!(WorkerToPage::decode("{\"type\":\"nope\"}").is_err());
}
