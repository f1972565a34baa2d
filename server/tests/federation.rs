//! The server as clients and operators use it: real WebSockets on loopback, simulated clients
//! running the same session code as the browser, the admin API, a restart from the store.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use client_wasm::attack::Attack;
use client_wasm::native::{DriverOptions, run_client};
use client_wasm::{Session, SessionOptions};
use futures_util::{SinkExt, StreamExt};
use protocol::admin::Event;
use protocol::messages::RunPhase;
use protocol::{ClientMessage, ErrorCode, FrameKind, PROTOCOL_VERSION, ServerMessage, TensorFrame};
use server::store::{Location, Store};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

mod support;

use support::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven client for hostile input.
struct Raw {
    ws: Ws,
}

impl Raw {
    async fn connect(url: &str) -> Self {
        Self {
            ws: tokio_tungstenite::connect_async(url).await.unwrap().0,
        }
    }
    async fn hello(url: &str, own: Option<u64>) -> Self {
        let caps = protocol::messages::Capabilities {
            name: "raw".into(),
            own_data: own.map(|n| protocol::messages::OwnData { num_examples: n }),
            ..Default::default()
        };
        Self::hello_with(url, caps).await
    }
    async fn hello_with(url: &str, caps: protocol::messages::Capabilities) -> Self {
        let mut r = Self::connect(url).await;
        r.text(
            &ClientMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_key: None,
                capabilities: caps,
            }
            .encode(),
        )
        .await;
        assert!(matches!(
            r.next_msg().await,
            Some(ServerMessage::Welcome { .. })
        ));
        r
    }
    async fn text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_string())).await.unwrap();
    }
    async fn binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.unwrap();
    }
    /// The next control message (binary frames are skipped), or `None` when the socket closed.
    async fn next_msg(&mut self) -> Option<ServerMessage> {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("message in time")
            {
                Some(Ok(Message::Text(t))) => {
                    return Some(ServerMessage::decode(t.as_str()).unwrap());
                }
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    }
    /// The next control message that is not the run's state (told on every join).
    async fn next_past_state(&mut self) -> Option<ServerMessage> {
        loop {
            match self.next_msg().await {
                Some(ServerMessage::RunState { .. }) => continue,
                other => return other,
            }
        }
    }
    async fn expect_error(&mut self, code: ErrorCode) -> String {
        loop {
            match self.next_msg().await {
                Some(ServerMessage::Error {
                    code: c, message, ..
                }) if c == code => return message,
                Some(ServerMessage::Error {
                    code: c, message, ..
                }) => panic!("expected {code:?}, got {c:?}: {message}"),
                Some(_) => continue,
                None => panic!("socket closed while waiting for {code:?}"),
            }
        }
    }
    async fn next_train_ins(&mut self) -> u64 {
        loop {
            match self.next_msg().await {
                Some(ServerMessage::TrainIns { server_round, .. }) => return server_round,
                Some(_) => continue,
                None => panic!("closed before train_ins"),
            }
        }
    }
    async fn send_update(&mut self, round: u64, n: u64, frame_round: u64, values: Vec<f32>) {
        self.text(
            &ClientMessage::TrainRes {
                server_round: round,
                num_examples: n,
                steps: 1,
            }
            .encode(),
        )
        .await;
        self.binary(
            TensorFrame {
                kind: FrameKind::Update,
                server_round: frame_round,
                values,
            }
            .encode()
            .unwrap(),
        )
        .await;
    }
}

const PARAMS: usize = 12_810;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_three_rounds_accuracy_rises_and_a_killed_client_does_not_stall() {
    let dir = temp_dir("rounds");
    let server = TestServer::start(&dir, None).await;
    let mut events = server.started.state.events.subscribe();
    // DP on, σ solved for ε = 3 over the run; 20 IID shards of 3 000.
    let run_id = server
        .create_and_start(
            r#"{"name":"it","rounds":3,"min_clients":3,"quorum":0.5,"round_timeout_secs":120,
                "batching":{"batch_size":256},"learning_rate":2.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    // The first client takes a shard, receives round 1's instructions and is killed.
    let mut doomed = Raw::connect(&server.ws()).await;
    doomed
        .text(
            &ClientMessage::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_key: None,
                capabilities: Default::default(),
            }
            .encode(),
        )
        .await;
    assert!(matches!(
        doomed.next_msg().await,
        Some(ServerMessage::Welcome { .. })
    ));
    let clients: Vec<_> = (0..3).map(|_| sim_client(server.ws(), None)).collect();
    assert_eq!(doomed.next_train_ins().await, 1);
    drop(doomed);

    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 3 rounds done"));
        assert!(report.epsilon.unwrap() <= 3.0);
    }
    let h = server.history(run_id).await;
    assert_eq!(h.rounds.len(), 3, "{h:?}");
    let acc: Vec<f64> = h.rounds.iter().map(|r| r.test_accuracy).collect();
    assert!(
        acc[2] > acc[0] && acc[2] > 0.6,
        "accuracy should rise: {acc:?}"
    );
    // Round 1 closed without the killed client (a sim client that connected after the round
    // started joins the next one).
    assert!(
        h.rounds[0].participants >= 2 && h.rounds[0].failures == 1,
        "{:?}",
        h.rounds[0]
    );
    assert!(
        h.rounds[1..]
            .iter()
            .all(|r| r.participants == 3 && r.failures == 0),
        "{:?}",
        h.rounds
    );
    assert!(h.rounds.iter().all(|r| r.epsilon.unwrap() <= 3.0));
    let failed = wait_for(&mut events, 1, |e| matches!(e, Event::ClientFailed { .. })).await;
    assert!(matches!(
        failed,
        Event::ClientFailed {
            server_round: 1,
            ..
        }
    ));
    // The global model can be downloaded in the wire format.
    let res = server
        .started
        .router
        .clone()
        .oneshot(
            Request::get(format!("/api/admin/runs/{run_id}/model"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    let frame = TensorFrame::decode(&bytes).unwrap();
    assert_eq!((frame.server_round, frame.values.len()), (3, PARAMS));
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The second task through the same rounds: the run names it, the clients are told it with
/// every instruction, train its model on its shards, and the server evaluates on its test set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fashion_mnist_run_trains_its_own_model_on_its_own_data() {
    let dir = temp_dir("fashion");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"fashion","task":"fashion-mnist","rounds":2,"min_clients":2,
                "batching":{"batch_size":256},"learning_rate":2.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    // A client told the run's task hears it with the model: a Fashion-MNIST shard's classes.
    // The run's state names the task first (what a client bringing its own data learns).
    let (mut raw, _welcome) = welcome(&server.ws(), None).await;
    let (mut assignment, mut state) = (None, None);
    while assignment.is_none() {
        match raw.next_msg().await {
            Some(ServerMessage::Assignment(a)) => assignment = Some(a),
            Some(ServerMessage::RunState { task, .. }) => state = Some(task),
            Some(_) => {}
            None => panic!("closed before an assignment"),
        }
    }
    assert_eq!(state, Some(learning::task::FASHION_MNIST.spec()));
    let a = assignment.unwrap();
    assert_eq!(a.task, learning::task::FASHION_MNIST.spec());
    // The histogram is of Fashion-MNIST's labels for that shard (not MNIST's).
    let data = mnist();
    let fashion = data.of(&learning::task::FASHION_MNIST).unwrap();
    let split = learning::shard::partition(
        &fashion.train.labels,
        20,
        protocol::config::ShardScheme::Iid,
        7,
    )
    .unwrap();
    let expected =
        learning::shard::label_histogram(&fashion.train.labels, &split[a.shard_index as usize]);
    assert_eq!(a.label_histogram, expected.to_vec());
    drop(raw);
    let clients: Vec<_> = (0..2).map(|_| sim_client(server.ws(), None)).collect();
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 2 rounds done"));
    }
    let h = server.history(run_id).await;
    assert_eq!(h.run.config.task, "fashion-mnist");
    let acc: Vec<f64> = h.rounds.iter().map(|r| r.test_accuracy).collect();
    // Chance is 10 %; two DP rounds on 6 000 examples reach well past it.
    assert!(acc.len() == 2 && acc[1] > 0.5, "{acc:?}");
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_median_a_hostile_client_cannot_stop_the_model_from_learning() {
    let dir = temp_dir("robust");
    let server = TestServer::start(&dir, None).await;
    // Attack: one of four clients sends a random update of norm 1 000 every round (under FedAvg
    // this keeps the model at 10–19 % accuracy); the run aggregates with the median.
    let run_id = server
        .create_and_start(
            r#"{"name":"robust","rounds":3,"min_clients":4,"quorum":1.0,"round_timeout_secs":120,
                "batching":{"batch_size":256},"learning_rate":2.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7},
                "aggregator":{"kind":"median"}}"#,
        )
        .await;
    let mut clients: Vec<_> = (0..3).map(|_| sim_client(server.ws(), None)).collect();
    clients.push(hostile_client(
        server.ws(),
        None,
        Some(Attack::Random(1000.0)),
    ));
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 3 rounds done"));
    }
    let h = server.history(run_id).await;
    assert!(
        h.rounds.iter().all(|r| r.participants == 4),
        "{:?}",
        h.rounds
    );
    let acc: Vec<f64> = h.rounds.iter().map(|r| r.test_accuracy).collect();
    assert!(acc[2] > 0.6, "the median should hold: {acc:?}");
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sampled_client_holds_the_round_only_a_while_after_the_quorum() {
    let dir = temp_dir("silent");
    let server = TestServer::start(&dir, None).await;
    // Attack: a sampled client that takes its instructions and never answers, while the round
    // timeout is the default 600 s.
    let run_id = server
        .create_and_start(
            r#"{"name":"silent","rounds":1,"min_clients":3,"quorum":0.5,
                "batching":{"batch_size":256},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    let mut silent = Raw::hello(&server.ws(), None).await;
    let clients: Vec<_> = (0..2).map(|_| sim_client(server.ws(), None)).collect();
    assert_eq!(silent.next_train_ins().await, 1);
    let start = std::time::Instant::now();
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 1 rounds done"));
    }
    let waited = start.elapsed();
    let h = server.history(run_id).await;
    assert_eq!((h.rounds[0].participants, h.rounds[0].failures), (2, 1));
    // Quorum (2 of 3) after a few seconds, then the straggler wait of at least 30 s.
    assert!(
        waited >= Duration::from_secs(25) && waited < Duration::from_secs(120),
        "the round took {waited:?}"
    );
    drop(silent);
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_input_is_rejected_and_the_run_goes_on() {
    let dir = temp_dir("hostile");
    let server = TestServer::start(&dir, None).await;
    let url = server.ws();

    // Before any run: protocol violations at the door.
    let mut r = Raw::connect(&url).await;
    r.binary(vec![1, 2, 3]).await;
    r.expect_error(ErrorCode::BadSequence).await;
    let mut r = Raw::connect(&url).await;
    r.text(r#"{"type":"hello","protocol_version":99}"#).await;
    assert!(
        r.expect_error(ErrorCode::UnsupportedVersion)
            .await
            .contains(&format!("expected {PROTOCOL_VERSION}"))
    );
    let mut r = Raw::connect(&url).await;
    r.text("{not json").await;
    r.expect_error(ErrorCode::BadMessage).await;
    // A declared data size is bounded where it is decoded: 10¹² (FedAvg would make this one
    // client the whole model) and 2⁶⁴ − 18 000 (it wrapped the total weight to 0).
    for n in ["1000000000000", "18446744073709533616"] {
        let mut r = Raw::connect(&url).await;
        r.text(&format!(
            r#"{{"type":"hello","protocol_version":{PROTOCOL_VERSION},"capabilities":{{"own_data":{{"num_examples":{n}}}}}}}"#
        ))
        .await;
        let message = r.expect_error(ErrorCode::BadMessage).await;
        assert!(
            message.contains(&format!(
                "capabilities.own_data.num_examples is {n}: expected a whole number from 1 to 10 000 000"
            )),
            "{message}"
        );
    }

    // A run where clients bring their own data; one honest client, one hostile.
    let run_id = server
        .create_and_start(
            r#"{"name":"hostile","rounds":2,"min_clients":2,"quorum":0.5,"round_timeout_secs":60,
                "batching":{"batch_size":32},"learning_rate":0.5,
                "dp":{"max_grad_norm":1.0,"noise_multiplier":1.0,"delta":1e-5},"shards":null}"#,
        )
        .await;
    let mut bad = Raw::hello(&url, Some(100)).await;
    bad.text("garbage").await;
    bad.expect_error(ErrorCode::BadMessage).await;
    bad.binary(vec![0; 64]).await;
    bad.expect_error(ErrorCode::BadSequence).await;
    let honest = sim_client(url.clone(), Some(200));

    // Round 1: wrong length, then a second try is a duplicate.
    let round = bad.next_train_ins().await;
    assert_eq!(round, 1);
    bad.send_update(round, 100, round, vec![0.0; 5]).await;
    assert!(
        bad.expect_error(ErrorCode::InvalidUpdate)
            .await
            .contains("expected 12810")
    );
    bad.send_update(round, 100, round, vec![0.0; PARAMS]).await;
    bad.expect_error(ErrorCode::Duplicate).await;
    // A client that was never sampled cannot slip an update in.
    let mut intruder = Raw::hello(&url, Some(50)).await;
    intruder
        .send_update(round, 50, round, vec![0.0; PARAMS])
        .await;
    let msg = intruder.expect_error(ErrorCode::NotSampled).await;
    assert!(msg.contains("not sampled"), "{msg}");
    drop(intruder);

    // Round 2: NaN, inflated weight, wrong round, then an oversized frame closes the socket.
    let round = bad.next_train_ins().await;
    assert_eq!(round, 2);
    let mut nan = vec![0.0; PARAMS];
    nan[7] = f32::NAN;
    bad.send_update(round, 100, round, nan).await;
    assert!(
        bad.expect_error(ErrorCode::InvalidUpdate)
            .await
            .contains("value 7")
    );
    let mut other = Raw::hello(&url, Some(100)).await; // fresh identity, not sampled either
    other.send_update(99, 100, 99, vec![0.0; PARAMS]).await;
    other.expect_error(ErrorCode::WrongRound).await;
    other
        .send_update(round, 1_000_000, round, vec![0.0; PARAMS])
        .await;
    let _ = other.next_msg().await; // not sampled: refused either way
    // The server may close while this is still being written: a failed send is expected.
    let _closing_mid_write = bad.ws.send(Message::binary(vec![0u8; 2 << 20])).await;
    let mut told = None;
    loop {
        match bad.next_msg().await {
            None => break,
            Some(ServerMessage::Error {
                fatal: true,
                message,
                ..
            }) => told = Some(message),
            Some(_) => {}
        }
    }
    let told = told.expect("an error message before the socket closed");
    assert!(told.contains("limited to 65536 bytes"), "{told}");

    // The honest client finishes the run; every hostile result was counted, none aggregated.
    let report = honest.await.unwrap().expect("honest client finishes");
    assert_eq!(report.rounds_trained, vec![1, 2]);
    let h = server.history(run_id).await;
    assert_eq!(h.rounds.len(), 2);
    for r in &h.rounds {
        assert_eq!((r.participants, r.failures), (1, 1), "{r:?}");
        assert!(r.test_accuracy.is_finite());
    }
    let (status, _) = server.admin("GET", "/api/health", "", None).await;
    assert_eq!(status, StatusCode::OK);
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_whose_cap_forbids_a_round_are_not_sampled_and_a_refusal_ends_their_run() {
    // Attack on the old behaviour: a capped client was sampled, refused, was charged, and with
    // accept_failures false the round was retried forever.
    let dir = temp_dir("caps");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"caps","rounds":2,"min_clients":2,"accept_failures":false,
                "round_timeout_secs":60,"batching":{"batch_size":50},"learning_rate":0.5,
                "dp":{"max_grad_norm":1.0,"noise_multiplier":1.0,"delta":1e-5},"shards":null}"#,
        )
        .await;
    // Declares a cap one round would cross: never sampled.
    let mut capped = Raw::hello_with(
        &server.ws(),
        protocol::messages::Capabilities {
            name: "capped".into(),
            own_data: Some(protocol::messages::OwnData { num_examples: 300 }),
            epsilon_cap: Some(0.01),
            delta: Some(1e-6),
            ..Default::default()
        },
    )
    .await;
    // Declares no cap but refuses (its own ledger, from earlier runs, is spent).
    let mut refuser = Raw::hello(&server.ws(), Some(300)).await;
    let clients: Vec<_> = (0..2).map(|_| sim_client(server.ws(), Some(300))).collect();
    let round = refuser.next_train_ins().await;
    refuser
        .text(
            &ClientMessage::TrainFailed {
                server_round: round,
                reason: "this round would take ε past this client's cap".into(),
                refuses_run: true,
            }
            .encode(),
        )
        .await;
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 2 rounds done"));
    }
    for (name, raw, asked) in [("refuser", &mut refuser, 0), ("capped", &mut capped, 0)] {
        let mut train_ins = 0;
        loop {
            match raw.next_msg().await {
                Some(ServerMessage::TrainIns { .. }) => train_ins += 1,
                Some(ServerMessage::RunFinished { .. }) | None => break,
                Some(_) => {}
            }
        }
        assert_eq!(train_ins, asked, "{name} was asked to train again");
    }
    let h = server.history(run_id).await;
    assert_eq!(h.rounds.len(), 2, "{h:?}");
    assert!(
        h.rounds.iter().all(|r| r.participants == 2),
        "{:?}",
        h.rounds
    );
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_always_fail_sit_out_and_the_run_goes_on() {
    // The attack: 4 clients that answer every train instruction with train_failed kept the
    // quorum (half the sampled) unmet; nothing was committed, and the honest clients' ε was
    // charged for every retry.
    let dir = temp_dir("failers");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"failers","rounds":2,"min_clients":2,"quorum":0.5,"round_timeout_secs":60,
                "batching":{"batch_size":50},"learning_rate":0.5,
                "dp":{"max_grad_norm":1.0,"noise_multiplier":1.0,"delta":1e-5},"shards":null}"#,
        )
        .await;
    let mut failers = Vec::new();
    for _ in 0..4 {
        let mut raw = Raw::hello(&server.ws(), Some(300)).await;
        failers.push(tokio::spawn(async move {
            let mut refused = 0;
            loop {
                match raw.next_msg().await {
                    Some(ServerMessage::TrainIns { server_round, .. }) => {
                        refused += 1;
                        let no = ClientMessage::TrainFailed {
                            server_round,
                            reason: "no".into(),
                            refuses_run: false,
                        };
                        raw.text(&no.encode()).await;
                    }
                    Some(ServerMessage::RunFinished { .. }) | None => return refused,
                    Some(_) => {}
                }
            }
        }));
    }
    let honest: Vec<_> = (0..2).map(|_| sim_client(server.ws(), Some(300))).collect();
    for c in honest {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 2 rounds done"));
    }
    for f in failers {
        let refused = f.await.unwrap();
        assert!(
            refused <= server::coordinator::MAX_FAILURES_IN_A_ROW,
            "asked {refused} times"
        );
    }
    let h = server.history(run_id).await;
    assert_eq!(h.rounds.len(), 2, "{h:?}");
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_routes_need_the_token_and_name_bad_fields() {
    let dir = temp_dir("admin");
    let server = TestServer::start(&dir, None).await;
    let routes = [
        ("GET", "/api/admin/runs"),
        ("POST", "/api/admin/runs"),
        ("GET", "/api/admin/runs/1"),
        ("POST", "/api/admin/runs/1/start"),
        ("GET", "/api/admin/runs/1/model"),
        ("GET", "/api/admin/clients"),
        ("GET", "/api/admin/events"),
        ("GET", "/api/admin/check"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token-wrong-token"), Some("")] {
            let (status, body) = server.admin(method, path, "{}", token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(
                body["error"].as_str().unwrap().contains("admin token"),
                "{body}"
            );
        }
    }
    let (status, _) = server
        .admin("GET", "/api/admin/check", "", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The tasks the run form offers come from the registry, with whether the data is here.
    let (status, tasks) = server.admin("GET", "/api/tasks", "", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, learning::TASKS.map(|t| t.id));
    assert!(
        tasks.as_array().unwrap().iter().all(|t| t["data"] == true),
        "{tasks}"
    );
    assert_eq!(tasks[1]["classes"][9], "Ankle boot");

    for (body, field) in [
        (r#"{"rounds":0}"#, "rounds"),
        // A task the server does not know, and one that is no task id at all.
        (r#"{"task":"cifar-10"}"#, "task"),
        (r#"{"task":"<script>"}"#, "task"),
        (r#"{"learning_rate":"fast"}"#, "learning_rate"),
        (
            r#"{"dp":{"max_grad_norm":1,"delta":1e-5}}"#,
            "dp.noise_multiplier",
        ),
        (
            r#"{"shards":{"scheme":{"kind":"dirichlet","alpha":0.001},"num_shards":5000,"seed":1}}"#,
            "shards",
        ),
        (
            r#"{"rounds":3,"dp":{"max_grad_norm":1,"target_epsilon":1e-6,"delta":1e-5}}"#,
            "dp.target_epsilon",
        ),
        // Configs a client would refuse, said at creation: 100 epochs of batch 1 on shards of
        // 6 000 (600 000 steps a round), δ = 0.005 ≥ 1/6000.
        (
            r#"{"local_epochs":100,"batching":{"batch_size":1}}"#,
            "batching.batch_size",
        ),
        (
            r#"{"dp":{"max_grad_norm":1,"noise_multiplier":1,"delta":0.005}}"#,
            "dp.delta",
        ),
        ("[]", "body"),
    ] {
        let (status, res) = server
            .admin("POST", "/api/admin/runs", body, Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {res}");
        assert_eq!(res["field"], field, "{body}: {res}");
    }
    // The 422 speaks the form's words: its label and one plain range.
    let (_, res) = server
        .admin("POST", "/api/admin/runs", r#"{"rounds":0}"#, Some(TOKEN))
        .await;
    assert_eq!(
        res["error"],
        "Rounds is 0: expected a whole number from 1 to 10\u{a0}000"
    );
    let (_, res) = server
        .admin(
            "POST",
            "/api/admin/runs",
            r#"{"local_epochs":100,"batching":{"batch_size":1}}"#,
            Some(TOKEN),
        )
        .await;
    assert!(
        res["error"]
            .as_str()
            .unwrap()
            .starts_with("Batch size is 1: expected a batch size that needs at most 100 000 steps a round on shards of 6000 examples"),
        "{res}"
    );
    // A valid run; a second one conflicts until the first is stopped.
    let (status, run) = server
        .admin("POST", "/api/admin/runs", "{}", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = run["run_id"].as_u64().unwrap();
    let (status, _) = server
        .admin("POST", "/api/admin/runs", "{}", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server
        .admin(
            "POST",
            &format!("/api/admin/runs/{id}/resume"),
            "",
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "resume a run that never started"
    );
    let (status, _) = server
        .admin(
            "POST",
            &format!("/api/admin/runs/{id}/explode"),
            "",
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (action, status_after) in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
    ] {
        let (status, body) = server
            .admin(
                "POST",
                &format!("/api/admin/runs/{id}/{action}"),
                "",
                Some(TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
        assert_eq!(body["status"], status_after);
    }
    let (status, _) = server
        .admin("POST", "/api/admin/runs", "{}", Some(TOKEN))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a new run after the old one stopped"
    );
    let (status, body) = server
        .admin("GET", "/api/admin/runs", "", Some(TOKEN))
        .await;
    assert_eq!(
        (status, body.as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );

    // The event stream delivers JSON events.
    let res = server
        .started
        .router
        .clone()
        .oneshot(
            Request::get(format!("/api/admin/events?token={TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body().into_data_stream();
    let (status, _) = server
        .admin("POST", "/api/admin/runs/2/start", "", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(
        text.starts_with("data: ") && text.contains(r#""type":"run_status""#),
        "{text}"
    );
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_from_its_last_checkpoint_with_the_same_ledger() {
    let dir = temp_dir("restart");
    a_killed_server_resumes(&dir, Location::DataDir(dir.clone())).await;
}

/// The same with the store in PostgreSQL (a throw-away cluster this test starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_from_postgresql_with_the_same_ledger() {
    let dir = temp_dir("restart-pg");
    let cluster = support::postgres::cluster();
    a_killed_server_resumes(&dir, Location::Url(cluster.database("restart"))).await;
}

async fn a_killed_server_resumes(dir: &std::path::Path, store: Location) {
    let dir = dir.to_path_buf();
    let server = TestServer::start_with(&dir, store.clone(), None).await;
    let addr = server.addr;
    let mut events = server.started.state.events.subscribe();
    let run_id = server
        .create_and_start(
            r#"{"name":"restart","rounds":4,"min_clients":3,"round_timeout_secs":120,
                "batching":{"batch_size":128},"learning_rate":1.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":2.0,"delta":1e-5},
                "shards":{"scheme":{"kind":"iid"},"num_shards":30,"seed":3}}"#,
        )
        .await;
    let clients: Vec<_> = (0..3)
        .map(|_| sim_client(format!("ws://{addr}/ws"), None))
        .collect();
    wait_for(
        &mut events,
        300,
        |e| matches!(e, Event::RoundClosed { record, .. } if record.server_round == 2),
    )
    .await;
    let before = server.history(run_id).await;
    server.kill().await;

    // What survived in the store: two rounds, their checkpoint, every client's ledger.
    let stored = Store::open_at(&store).unwrap();
    let (round, checkpoint) = stored.latest_checkpoint(run_id).unwrap().unwrap();
    assert!(round >= 2);
    let ledger_on_disk = stored.clients(run_id).unwrap();
    drop(stored);
    assert_eq!(ledger_on_disk.len(), 3);

    let server = TestServer::start_with(&dir, store.clone(), Some(addr)).await;
    let resumed = server.history(run_id).await;
    assert_eq!(resumed.run.completed_rounds, round);
    assert_eq!(resumed.rounds[..2], before.rounds[..2]);
    // ε spent is never forgotten (a round in flight at the kill was charged at dispatch).
    for (b, a) in before.ledger.iter().zip(&resumed.ledger) {
        assert!(
            a.steps >= b.steps && a.epsilon >= b.epsilon,
            "{b:?} → {a:?}"
        );
    }
    // The clients reconnect with their keys, keep their shards and finish the run. The round in
    // flight at the kill was charged when dispatched and is charged again when redone (its
    // clients did train), so the budget may end the run one round early: never under-counted.
    let mut reasons = Vec::new();
    for c in clients {
        let report = c.await.unwrap().expect("client survives the restart");
        reasons.push(report.finished.unwrap());
    }
    let h = server.history(run_id).await;
    let rounds: Vec<u64> = h.rounds.iter().map(|r| r.server_round).collect();
    assert!(rounds == [1, 2, 3, 4] || rounds == [1, 2, 3], "{rounds:?}");
    assert_eq!(h.run.finished_reason.as_deref(), Some(reasons[0].as_str()));
    if rounds.len() == 3 {
        assert!(
            reasons[0].starts_with("privacy budget exhausted"),
            "{reasons:?}"
        );
    }
    let shards_before: Vec<_> = ledger_on_disk.iter().map(|c| c.shard_index).collect();
    let shards_after: Vec<_> = h.ledger.iter().map(|c| c.shard_index).collect();
    assert_eq!(shards_before, shards_after, "same clients, same shards");
    assert!(
        h.ledger.iter().all(|c| c.epsilon.unwrap() <= 2.0),
        "{:?}",
        h.ledger
    );
    // Round 3 started from the checkpoint the new server loaded.
    let stored = Store::open_at(&store).unwrap();
    assert_ne!(
        stored.latest_checkpoint(run_id).unwrap().unwrap().1,
        checkpoint
    );
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_connection_with_the_same_key_replaces_the_first() {
    let dir = temp_dir("replace");
    let server = TestServer::start(&dir, None).await;
    let hello = |key: Option<String>| {
        ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_key: key,
            capabilities: Default::default(),
        }
        .encode()
    };
    let mut first = Raw::connect(&server.ws()).await;
    first.text(&hello(None)).await;
    let Some(ServerMessage::Welcome {
        client_key,
        client_id: first_id,
        ..
    }) = first.next_msg().await
    else {
        panic!("welcome expected")
    };
    // A tab that reconnects before the server noticed its old socket died.
    let mut second = Raw::connect(&server.ws()).await;
    second.text(&hello(Some(client_key.clone()))).await;
    let Some(ServerMessage::Welcome {
        client_key: again,
        client_id,
        ..
    }) = second.next_msg().await
    else {
        panic!("welcome expected")
    };
    assert_eq!(again, client_key, "same identity");
    assert_eq!(client_id, first_id, "the same client number");
    assert!(
        first
            .expect_error(ErrorCode::Replaced)
            .await
            .contains("replaced")
    );
    assert!(first.next_msg().await.is_none(), "the old socket is closed");
    // The old socket's end does not take its successor (same number) off the list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, clients) = server
        .admin("GET", "/api/admin/clients", "", Some(TOKEN))
        .await;
    let listed: Vec<_> = clients.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{clients}");
    assert_eq!(listed[0]["client_id"], first_id);
    assert_eq!(listed[0]["state"], "idle");
    // A malformed key is not an identity: the client gets a fresh one.
    let mut third = Raw::connect(&server.ws()).await;
    third.text(&hello(Some("../../etc/passwd".into()))).await;
    let Some(ServerMessage::Welcome {
        client_key: fresh, ..
    }) = third.next_msg().await
    else {
        panic!()
    };
    assert!(fresh != client_key && fresh.len() == 32);
    // A well-formed key this server never issued is no identity either (a client cannot pick
    // its own and claim whatever it names).
    let chosen = "0123456789abcdef0123456789abcdef".to_string();
    let mut fourth = Raw::connect(&server.ws()).await;
    fourth.text(&hello(Some(chosen.clone()))).await;
    let Some(ServerMessage::Welcome {
        client_key: issued, ..
    }) = fourth.next_msg().await
    else {
        panic!()
    };
    assert!(issued != chosen && issued.len() == 32);
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client's first `Welcome` (after a `Hello` presenting `key`): its number and key.
async fn welcome(url: &str, key: Option<String>) -> (Raw, ServerMessage) {
    let mut r = Raw::connect(url).await;
    r.text(
        &ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_key: key,
            capabilities: Default::default(),
        }
        .encode(),
    )
    .await;
    let w = r.next_msg().await.expect("welcome");
    (r, w)
}

impl Raw {
    /// The next `RunState` (other messages are skipped).
    async fn next_phase(&mut self) -> RunPhase {
        loop {
            match self.next_msg().await {
                Some(ServerMessage::RunState { phase, .. }) => return phase,
                Some(_) => continue,
                None => panic!("closed before run_state"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_key_keeps_its_number_and_hears_what_it_missed() {
    let dir = temp_dir("returning");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"returning","rounds":2,"min_clients":2,
                "batching":{"batch_size":256},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    let (mut a, w) = welcome(&server.ws(), None).await;
    let ServerMessage::Welcome {
        client_id,
        client_key,
        rounds_taken: 0,
        interrupted_round: None,
        ..
    } = w
    else {
        panic!("a first welcome: {w:?}")
    };
    // Alone, it hears that the run waits for clients, and for how many.
    assert_eq!(a.next_phase().await, RunPhase::Waiting { needed: 2 });
    let (mut b, _) = welcome(&server.ws(), None).await;
    assert_eq!(a.next_phase().await, RunPhase::Running);
    assert_eq!(a.next_train_ins().await, 1);
    assert_eq!(b.next_train_ins().await, 1);
    // The tab reloads in the middle of round 1.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut a, w) = welcome(&server.ws(), Some(client_key.clone())).await;
    assert_eq!(
        w,
        ServerMessage::Welcome {
            client_id,
            client_key,
            model_params: 12_810,
            rounds_taken: 1,
            interrupted_round: Some(1),
        },
        "same number, its round counted, and told which round the reload cost it"
    );
    assert_eq!(a.next_phase().await, RunPhase::Running);
    let (_, clients) = server
        .admin("GET", "/api/admin/clients", "", Some(TOKEN))
        .await;
    let rows = clients.as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the returning tab is one row, not a new client: {clients}"
    );
    let row = rows.iter().find(|c| c["client_id"] == client_id).unwrap();
    assert_eq!(
        (row["rounds"].as_u64(), row["failures"].as_u64()),
        (Some(1), Some(1))
    );
    // Paused: every tab hears it.
    server
        .admin(
            "POST",
            &format!("/api/admin/runs/{run_id}/pause"),
            "",
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.next_phase().await, RunPhase::Paused);
    assert_eq!(b.next_phase().await, RunPhase::Paused);
    // A client that joins a paused run hears it at once.
    let (mut c, _) = welcome(&server.ws(), None).await;
    assert_eq!(c.next_phase().await, RunPhase::Paused);
    // And after a restart, the run resumed from the store is still said to be paused.
    let addr = server.addr;
    drop((a, b, c));
    server.kill().await;
    let server = TestServer::start(&dir, Some(addr)).await;
    let (mut d, _) = welcome(&server.ws(), None).await;
    assert_eq!(d.next_phase().await, RunPhase::Paused);
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_cannot_be_squatted_by_sockets_that_say_hello_and_leave() {
    // The attack: as many hellos as shards, each socket closed at once, took every shard of
    // the run; an honest client then waited forever ("all 2 shards … are taken").
    let dir = temp_dir("squat");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"squat","rounds":1,"min_clients":5,
                "shards":{"scheme":{"kind":"iid"},"num_shards":2,"seed":1}}"#,
        )
        .await;
    for _ in 0..2 {
        let mut squatter = Raw::hello(&server.ws(), None).await;
        assert!(matches!(
            squatter.next_past_state().await,
            Some(ServerMessage::Assignment(_))
        ));
    }
    // The squatters are gone (dropped); an honest client gets a shard once the server has
    // seen them leave.
    let mut got = None;
    for _ in 0..50 {
        let mut honest = Raw::hello(&server.ws(), None).await;
        match honest.next_past_state().await {
            Some(ServerMessage::Assignment(a)) => {
                got = Some(a.shard_index);
                break;
            }
            Some(ServerMessage::Error {
                code: ErrorCode::NoShardAvailable,
                ..
            }) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("{other:?}"),
        }
    }
    assert!(got.is_some(), "a shard was reclaimed for the honest client");
    // The admin token travels in a header; in a URL only for the event stream.
    let (status, _) = server
        .admin("GET", &format!("/api/admin/runs?token={TOKEN}"), "", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A page served by one gateway and moved to another reads the shard answer there, an
    // error included (not an opaque network failure); a single server lists no gateways.
    let req = Request::get(format!(
        "/api/runs/{run_id}/shards/0/images?client_key=nobody"
    ))
    .body(Body::empty())
    .unwrap();
    let res = server.started.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    let (status, body) = server.admin("GET", "/api/servers", "", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"servers": []}))
    );
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_built_frontend_is_served_on_the_same_port_and_api_paths_stay_json() {
    let dir = temp_dir("static");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(
        dir.join("www/index.html"),
        "<!doctype html><title>fl-dp</title>",
    )
    .unwrap();
    std::fs::write(dir.join("www/app.js"), "console.log(1)").unwrap();
    let server = TestServer::start(&dir, None).await;
    let get = |path: &str| {
        let router = server.started.router.clone();
        let req = Request::get(path).body(Body::empty()).unwrap();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status();
            let ty = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                ty.unwrap_or_default(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    let (status, ty, body) = get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        ty.starts_with("text/html") && body.contains("<title>fl-dp"),
        "{ty} {body}"
    );
    // A response's headers `keys`, for `path`.
    let headers = |path: &str, keys: [&'static str; 3]| {
        let router = server.started.router.clone();
        let req = Request::get(path).body(Body::empty()).unwrap();
        async move {
            let res = router.oneshot(req).await.unwrap();
            keys.map(|k| {
                res.headers()
                    .get(k)
                    .map(|v| v.to_str().unwrap().to_string())
            })
        }
    };
    let keys = [
        "cross-origin-opener-policy",
        "cross-origin-embedder-policy",
        "cache-control",
    ];
    // Cross-origin isolated, so that a tab's workers may share a SharedArrayBuffer; and the
    // pages' files revalidated at every load, so that a new deployment is never mixed with a
    // cached old `worker_bg.wasm`. The API's answers are not the pages' to say.
    let [coop, coep, cache] = headers("/", keys).await;
    assert_eq!(
        (coop.as_deref(), coep.as_deref(), cache.as_deref()),
        (Some("same-origin"), Some("require-corp"), Some("no-cache"))
    );
    let [.., api_cache] = headers("/api/health", keys).await;
    assert_eq!(api_cache, None);
    let (status, _, body) = get("/admin").await;
    assert_eq!(status, StatusCode::OK, "the page routes itself");
    assert!(body.contains("<title>fl-dp"));
    let (_, ty, body) = get("/app.js").await;
    assert!(
        ty.contains("javascript") && body.contains("console.log"),
        "{ty}"
    );
    for path in ["/api/nope", "/api/admin/nope"] {
        let (status, ty, body) = get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            ty.starts_with("application/json") && body.contains("no API route"),
            "{path}: {ty} {body}"
        );
    }
    // Pages go out gzipped to a browser that asks for it (the wasm is megabytes).
    std::fs::write(dir.join("www/big.js"), "console.log(1);\n".repeat(500)).unwrap();
    let req = Request::get("/big.js")
        .header("accept-encoding", "gzip")
        .body(Body::empty())
        .unwrap();
    let res = server.started.router.clone().oneshot(req).await.unwrap();
    assert_eq!(
        res.headers().get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(body.len() < 1000, "{} bytes for 8 000", body.len());
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// When a scripted secure-aggregation member leaves the round.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quit {
    Never,
    BeforeKeys,
    AfterShares,
    AfterMasked,
    /// Stays, but masks under other instructions than it was sent (half the noise), as a
    /// member a hostile server told otherwise would: its masks do not cancel.
    OtherInstructions,
}

/// A member that runs secure aggregation over a raw socket with an update of the test's
/// choosing (so the test knows the plaintext sum), leaving where `quit` says.
async fn secure_member(url: String, update: Vec<f32>, quit: Quit) {
    secure_member_with(url, learning::Update::Delta(update), quit).await
}

/// [`secure_member`] with any kind of update (a distributed round's integers too).
async fn secure_member_with(url: String, update: learning::Update, quit: Quit) {
    use client_wasm::secure::SecureRound;
    let mut r = Raw::hello(&url, None).await;
    let mut examples = 0;
    let mut round: Option<SecureRound> = None;
    loop {
        let Some(msg) = r.next_msg().await else {
            return;
        };
        match msg {
            ServerMessage::Assignment(a) => examples = a.num_examples,
            ServerMessage::SecAggSetup(setup) => {
                if quit == Quit::BeforeKeys {
                    return;
                }
                let (s, keys) = SecureRound::start(setup, PARAMS + 1, None).expect("setup");
                send(&mut r, keys).await;
                round = Some(s);
            }
            ServerMessage::SecAggPeers { peers, .. } => {
                let out = round.as_mut().unwrap().on_peers(&peers).expect("shares");
                send(&mut r, out).await;
                if quit == Quit::AfterShares {
                    return;
                }
            }
            ServerMessage::TrainIns { mut config, .. } => {
                let round = round.as_mut().unwrap();
                if quit == Quit::OtherInstructions
                    && let Some(dp) = config.dp.as_mut()
                {
                    dp.noise_multiplier /= 2.0;
                }
                round.bind(&config).expect("t fits the round");
                let out = round
                    .on_trained(update.clone(), examples, 1, &config.mask_context())
                    .expect("masked");
                for o in out {
                    send(&mut r, o).await;
                }
            }
            ServerMessage::SecAggInbox { envelopes, .. } => {
                for o in round.as_mut().unwrap().on_inbox(&envelopes).expect("inbox") {
                    send(&mut r, o).await;
                }
            }
            ServerMessage::SecAggUnmask { request, .. } => {
                if quit == Quit::AfterMasked {
                    return;
                }
                let out = round.as_mut().unwrap().on_unmask(&request).expect("reveal");
                send(&mut r, out).await;
            }
            ServerMessage::RoundClosed { .. } => return,
            _ => {}
        }
    }
}

async fn send(r: &mut Raw, out: client_wasm::session::Outgoing) {
    match out {
        client_wasm::session::Outgoing::Text(t) => r.ws.send(Message::text(t)).await.unwrap(),
        client_wasm::session::Outgoing::Binary(b) => r.binary(b).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_sums_exactly_what_its_survivors_sent_despite_drops_at_every_step() {
    let dir = temp_dir("secure");
    let server = TestServer::start(&dir, None).await;
    let mut events = server.started.state.events.subscribe();
    let (status, body) = server
        .admin(
            "POST",
            "/api/admin/runs",
            r#"{"name":"secure","rounds":1,"min_clients":10,"dp":null,
                "secure_aggregation":{"neighbours":9,"threshold":0.6},
                "shards":{"scheme":{"kind":"iid"},"num_shards":10,"seed":5}}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run_id = body["run_id"].as_u64().unwrap();
    let initial = {
        let store = Store::open(&dir).unwrap();
        store.latest_checkpoint(run_id).unwrap().unwrap().1
    };
    // Ten members with known updates: seven stay, one never sends keys, one leaves after its
    // shares (its masks must be removed), one after its masked vector (it is counted; the
    // others' shares unmask it).
    let quits = [
        Quit::Never,
        Quit::BeforeKeys,
        Quit::Never,
        Quit::AfterShares,
        Quit::Never,
        Quit::AfterMasked,
        Quit::Never,
        Quit::Never,
        Quit::Never,
        Quit::Never,
    ];
    let updates: Vec<Vec<f32>> = (0..10)
        .map(|i| {
            (0..initial.len())
                .map(|k| ((i * 31 + k * 7) % 200) as f32 / 1000.0 - 0.1)
                .collect()
        })
        .collect();
    let members: Vec<_> = quits
        .iter()
        .zip(&updates)
        .map(|(&q, u)| tokio::spawn(secure_member(server.ws(), u.clone(), q)))
        .collect();
    // Every member is connected before the run starts, so all ten are sampled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_run(run_id).await;
    wait_for(&mut events, 120, |e| matches!(e, Event::RoundClosed { .. })).await;
    for m in members {
        m.await.unwrap();
    }
    let h = server.history(run_id).await;
    let r = &h.rounds[0];
    assert!(r.secure);
    assert_eq!(
        (r.participants, r.failures, r.recovered),
        (8, 2, 1),
        "{r:?}"
    );
    // The new model is the initial one plus the mean of exactly the eight counted updates
    // (equal shards: equal weights), within the encoding's rounding.
    let after = {
        let store = Store::open(&dir).unwrap();
        store.latest_checkpoint(run_id).unwrap().unwrap().1
    };
    let counted: Vec<&Vec<f32>> = quits
        .iter()
        .zip(&updates)
        .filter(|(q, _)| matches!(q, Quit::Never | Quit::AfterMasked))
        .map(|(_, u)| u)
        .collect();
    let mut worst = 0f32;
    for k in 0..initial.len() {
        let mean = counted.iter().map(|u| u[k]).sum::<f32>() / counted.len() as f32;
        worst = worst.max((after[k] - initial[k] - mean).abs());
    }
    assert!(worst < 1e-4, "the aggregate is off by up to {worst}");
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_clients_train_a_secure_run_one_of_them_requiring_it() {
    let dir = temp_dir("secure-sims");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"secure-sims","rounds":2,"min_clients":3,"round_timeout_secs":120,
                "batching":{"batch_size":256},"learning_rate":2.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5},
                "secure_aggregation":{},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    let mut clients: Vec<_> = (0..2).map(|_| sim_client(server.ws(), None)).collect();
    let requiring = Session::new(SessionOptions {
        name: "requires-secagg".into(),
        require_secure_aggregation: true,
        ..Default::default()
    })
    .unwrap();
    clients.push(tokio::spawn(run_client(
        requiring,
        DriverOptions {
            servers: vec![server.ws()],
            reconnect_for: Duration::from_secs(30),
            exit_when_finished: true,
            training_slots: Arc::new(Semaphore::new(2)),
            attack: None,
            threads: 2,
        },
    )));
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 2 rounds done"));
    }
    let h = server.history(run_id).await;
    assert!(
        h.rounds.iter().all(|r| r.secure && r.participants == 3),
        "{:?}",
        h.rounds
    );
    assert!(h.rounds[1].test_accuracy > 0.6, "{:?}", h.rounds);
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_rounds_with_secure_aggregation_train_as_well_as_without() {
    let dir = temp_dir("secure-accuracy");
    let server = TestServer::start(&dir, None).await;
    let mut accuracy = Vec::new();
    for secure in [false, true] {
        let config = format!(
            r#"{{"name":"secure-{secure}","rounds":5,"min_clients":3,"round_timeout_secs":120,
                "batching":{{"batch_size":256}},"learning_rate":2.0,
                "dp":{{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5}},
                "secure_aggregation":{},
                "shards":{{"scheme":{{"kind":"iid"}},"num_shards":20,"seed":7}}}}"#,
            if secure { "{}" } else { "null" }
        );
        let (status, body) = server
            .admin("POST", "/api/admin/runs", &config, Some(TOKEN))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let run_id = body["run_id"].as_u64().unwrap();
        // The clients join and fetch their shards before the run starts, so that no round
        // loses a client still downloading (a difference between the two runs that is not
        // secure aggregation's).
        let clients: Vec<_> = (0..3).map(|_| sim_client(server.ws(), None)).collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.start_run(run_id).await;
        for c in clients {
            let report = c.await.unwrap().expect("client ran to the end");
            assert_eq!(report.finished.as_deref(), Some("all 5 rounds done"));
        }
        let h = server.history(run_id).await;
        // Local DP's long rounds keep fresh keys by default (a dropout is recovered, not retried).
        assert!(
            h.rounds
                .iter()
                .all(|r| r.secure == secure && !r.keys_reused),
            "{:?}",
            h.rounds
        );
        accuracy.push(h.rounds.last().unwrap().test_accuracy);
    }
    // The same training within the noise of DP (each run draws its own) and of the encoding's
    // rounding; BENCHMARKS.md compares them over 3 runs each on the demo config.
    assert!(
        (accuracy[0] - accuracy[1]).abs() < 0.05 && accuracy[1] > 0.8,
        "plain {:.4} vs secure {:.4}",
        accuracy[0],
        accuracy[1]
    );
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_dp_trains_one_step_per_round_over_secure_aggregation() {
    let dir = temp_dir("distributed");
    let server = TestServer::start(&dir, None).await;
    let run_id = server
        .create_and_start(
            r#"{"name":"distributed","rounds":30,"min_clients":3,"round_timeout_secs":120,
                "batching":{"batch_size":64},"learning_rate":2.0,
                "dp":{"max_grad_norm":1.0,"target_epsilon":3.0,"delta":1e-5,
                      "distributed":{"contributors":3,"evaluate_every":10}},
                "secure_aggregation":{},
                "shards":{"scheme":{"kind":"iid"},"num_shards":20,"seed":7}}"#,
        )
        .await;
    let clients: Vec<_> = (0..3).map(|_| sim_client(server.ws(), None)).collect();
    let mut reports = Vec::new();
    for c in clients {
        let report = c.await.unwrap().expect("client ran to the end");
        assert_eq!(report.finished.as_deref(), Some("all 30 rounds done"));
        // Rounds follow each other within milliseconds, so reveals the sum no longer needs
        // arrive between rounds: they are dropped, not answered with an error (which a tab
        // shows on its page).
        assert_eq!(
            report.server_errors,
            [],
            "an honest client of a healthy run"
        );
        reports.push(report);
    }
    let h = server.history(run_id).await;
    assert_eq!(h.rounds.len(), 30);
    assert!(
        h.rounds.iter().all(|r| r.secure && r.participants == 3),
        "{:?}",
        h.rounds
    );
    // The same three connections round after round: every round after a clean one reuses
    // its keys (a retried attempt draws fresh ones).
    for (prev, r) in h.rounds.iter().zip(&h.rounds[1..]) {
        let clean = prev.failures == 0 && prev.recovered == 0;
        assert_eq!(
            r.keys_reused,
            clean && r.attempts == 1,
            "{r:?} after {prev:?}"
        );
    }
    assert!(!h.rounds[0].keys_reused);
    assert!(
        h.rounds.iter().filter(|r| r.keys_reused).count() >= 20,
        "{:?}",
        h.rounds
    );
    // Evaluated every 10 rounds only (a round is one step).
    for r in &h.rounds {
        assert_eq!(
            r.test_accuracy.is_nan(),
            r.server_round % 10 != 0,
            "round {}: {}",
            r.server_round,
            r.test_accuracy
        );
    }
    let last = h.rounds.last().unwrap().test_accuracy;
    eprintln!("distributed: accuracy {last}, ledger {:?}", h.ledger);
    assert!(last > 0.6, "30 steps of batch ≈ 192: {last}");
    // Every client's ledger holds 30 distributed steps, within the target.
    for entry in &h.ledger {
        let eps = entry.epsilon.unwrap();
        assert!(eps > 0.5 && eps <= 3.0, "{entry:?}");
        assert_eq!(entry.steps, 30, "{entry:?}");
    }
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A distributed-DP run of one round with four scripted members whose integer sums the test
/// chose, each leaving where `quits` says, started; returns its id, its model before the
/// round, and the members' tasks.
async fn distributed_round(
    server: &TestServer,
    dir: &std::path::Path,
    name: &str,
    t: u32,
    sums: &[Vec<i64>],
    quits: [Quit; 4],
) -> (u64, Vec<f32>, Vec<JoinHandle<()>>) {
    let config = format!(
        r#"{{"name":"{name}","rounds":1,"min_clients":4,"round_timeout_secs":60,"quorum":0.5,
            "batching":{{"batch_size":64}},"learning_rate":1.0,
            "dp":{{"max_grad_norm":1.0,"noise_multiplier":1.0,"delta":1e-5,
                  "distributed":{{"contributors":{t}}}}},
            "secure_aggregation":{{}},
            "shards":{{"scheme":{{"kind":"iid"}},"num_shards":10,"seed":5}}}}"#
    );
    let (status, body) = server
        .admin("POST", "/api/admin/runs", &config, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let run_id = body["run_id"].as_u64().unwrap();
    let initial = {
        let store = Store::open(dir).unwrap();
        store.latest_checkpoint(run_id).unwrap().unwrap().1
    };
    let members = sums
        .iter()
        .zip(quits)
        .map(|(v, q)| {
            tokio::spawn(secure_member_with(
                server.ws(),
                learning::Update::Integers(v.clone()),
                q,
            ))
        })
        .collect();
    // Every member is connected before the run starts, so all four are sampled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_run(run_id).await;
    (run_id, initial, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_round_unmasks_the_exact_integer_sum_and_never_fewer_than_t() {
    let dir = temp_dir("distributed-exact");
    let server = TestServer::start(&dir, None).await;
    let mut events = server.started.state.events.subscribe();
    // Four members with known integer sums, negative ones too (they travel mod 2³²); one
    // leaves after its masked vector (the others' shares unmask it).
    let sums: Vec<Vec<i64>> = (0..4i64)
        .map(|i| {
            (0..PARAMS as i64)
                .map(|k| (i * 977 + k * 13) % 40_001 - 20_000)
                .collect()
        })
        .collect();
    let quits = [Quit::Never, Quit::Never, Quit::AfterMasked, Quit::Never];
    let (run_id, initial, members) =
        distributed_round(&server, &dir, "exact", 3, &sums, quits).await;
    wait_for(&mut events, 60, |e| matches!(e, Event::RoundClosed { .. })).await;
    for m in members {
        m.await.unwrap();
    }
    let after = {
        let store = Store::open(&dir).unwrap();
        store.latest_checkpoint(run_id).unwrap().unwrap().1
    };
    // SGD at lr 1 on the mean gradient: Σ sums · C/S / (4 members × batch 64).
    let mut worst = 0f64;
    for k in 0..PARAMS {
        let total: i64 = sums.iter().map(|v| v[k]).sum();
        let step = total as f64 / 1000.0 / 256.0;
        worst = worst.max((initial[k] as f64 - step - after[k] as f64).abs());
    }
    assert!(worst < 1e-5, "the step is off by up to {worst}");
    // t = 4 and a member that leaves after its shares: three masked sums are never unmasked.
    let quits = [Quit::Never, Quit::AfterShares, Quit::Never, Quit::Never];
    let (run_id, _, members) = distributed_round(&server, &dir, "below-t", 4, &sums, quits).await;
    let retried = wait_for(&mut events, 120, |e| {
        matches!(e, Event::RoundRetried { .. })
    })
    .await;
    let Event::RoundRetried { reason, .. } = retried else {
        unreachable!()
    };
    assert!(reason.contains("fewer than the 4 contributors"), "{reason}");
    assert!(server.history(run_id).await.rounds.is_empty());
    for m in members {
        m.abort();
    }
    // A member that masked under other instructions (a smaller z): the masks do not cancel,
    // and the sum is refused instead of stepping the model with garbage.
    server
        .admin(
            "POST",
            &format!("/api/admin/runs/{run_id}/stop"),
            "",
            Some(TOKEN),
        )
        .await;
    let quits = [
        Quit::Never,
        Quit::OtherInstructions,
        Quit::Never,
        Quit::Never,
    ];
    let (_, _, members) = distributed_round(&server, &dir, "other-noise", 3, &sums, quits).await;
    let retried = wait_for(
        &mut events,
        120,
        |e| matches!(e, Event::RoundRetried { reason, .. } if reason.contains("did not cancel")),
    )
    .await;
    let Event::RoundRetried { reason, .. } = retried else {
        unreachable!()
    };
    assert!(reason.contains("masks did not cancel"), "{reason}");
    for m in members {
        m.abort();
    }
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
