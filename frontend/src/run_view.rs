//! What the dashboard says about the run it shows beyond its status: what it waits for, and
//! how long its clients have been connected.
//! Native, so it is tested without a browser.

use protocol::admin::{ClientInfo, ClientState, RunStatus};

/// Clients in the list that are connected (the list also keeps the run's clients that left).
pub fn connected_count(clients: &[ClientInfo]) -> usize {
    clients
        .iter()
        .filter(|c| c.state != ClientState::Left)
        .count()
}

/// What a run is waiting for, when it is not training: too few clients connected for its next
/// round, or paused (a round in flight still finishes). `None` while a round runs or the run is
/// over.
pub fn waiting_for(
    status: RunStatus,
    in_flight: Option<u64>,
    connected: usize,
    min_clients: u32,
) -> Option<String> {
    match status {
        RunStatus::Paused => Some(match in_flight {
            Some(r) => format!("paused: round {r} still finishes, then no new round starts"),
            None => "paused: no new round starts until Resume".into(),
        }),
        RunStatus::Running if in_flight.is_none() && connected < min_clients as usize => Some(
            format!("waiting for {min_clients} clients ({connected} connected)"),
        ),
        _ => None,
    }
}

/// The clients table's state cell: "training", "left in round 2: disconnected", and whether
/// the client refuses the rest of the run.
pub fn state_text(c: &ClientInfo) -> String {
    let state = c
        .left
        .as_ref()
        .map_or_else(|| c.state.as_str().to_string(), |d| d.text());
    if c.refuses {
        format!("{state} · refuses further rounds (its budget is spent)")
    } else {
        state
    }
}

/// The clients table's ε cell: what the server charged, and how many of the charged rounds
/// failed (refused at the client's cap, cut by a disconnect, past the deadline, or rejected):
/// the client may not have spent those at all.
/// With distributed-DP rounds, the worst case follows: ε whatever the server and the other
/// clients do (the client's own noise shares alone). Otherwise RDP's ε for the same ledger
/// follows, to compare with the tight accountant's — or, for the moments the server is still
/// computing the tight ε of the latest charge, the cell says its number is RDP's.
pub fn charged_text(c: &ClientInfo) -> String {
    let charged = match (c.epsilon, c.failures) {
        (None, _) => return "—".into(),
        (Some(e), 0) => format!("{e:.3}"),
        (Some(e), 1) => format!("{e:.3} (incl. 1 failed round)"),
        (Some(e), n) => format!("{e:.3} (incl. {n} failed rounds)"),
    };
    let charged = match c.rdp_epsilon {
        _ if c.epsilon_pending => format!("{charged} by RDP (tight ε being computed)"),
        Some(r) => format!("{charged} · RDP {r:.3}"),
        None => charged,
    };
    match c.collusion_epsilon {
        Some(w) => format!("{charged} · {w:.1} whatever the others do"),
        None => charged,
    }
}

/// How the run's privacy noise is added (and what the server then sees).
pub fn dp_text(config: &protocol::admin::RunConfig) -> String {
    match config.dp {
        None => "differential privacy: off".into(),
        Some(dp) => match dp.distributed {
            None => {
                "differential privacy: each client adds all of its own noise (local DP-SGD)".into()
            }
            Some(d) => format!(
                "distributed DP: each round is one DP-SGD step over the sampled clients' data; each client adds 1/{} of the noise's variance, whole once {} clients' shares are summed (S = {}, β = {:.4}); the server takes the step",
                d.contributors, d.contributors, d.scale, d.beta
            ),
        },
    }
}

/// What the server sees of the run's updates.
pub fn secure_text(config: &protocol::admin::RunConfig) -> String {
    match &config.secure_aggregation {
        Some(s) => format!(
            "secure aggregation: the server sees only each round's sum ({} neighbours per client, {:.0} % of each client's share holders unmask{})",
            s.neighbours,
            s.threshold * 100.0,
            if s.reuses_keys(
                config
                    .dp
                    .as_ref()
                    .is_some_and(|dp| dp.distributed.is_some())
            ) {
                ", keys kept while the cohort stays the same"
            } else {
                ", fresh keys every round"
            }
        ),
        None => "secure aggregation: off (the server sees each client's noised update)".into(),
    }
}

/// The accuracy chart's title: the run's task names the test set the server evaluates on.
pub fn accuracy_title(task: Option<String>) -> String {
    match task {
        Some(name) => format!("Test accuracy and loss (the server's {name} test set)"),
        None => "Test accuracy and loss (the server's test set)".into(),
    }
}

/// A duration for a table cell: "45 s", "12 min", "3 h 05 min".
pub fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_says_what_it_waits_for() {
        assert_eq!(
            waiting_for(RunStatus::Running, None, 3, 4).as_deref(),
            Some("waiting for 4 clients (3 connected)")
        );
        assert_eq!(waiting_for(RunStatus::Running, None, 4, 4), None);
        // Clients that left during a round do not make it look stalled.
        assert_eq!(waiting_for(RunStatus::Running, Some(2), 1, 4), None);
        assert_eq!(
            waiting_for(RunStatus::Paused, Some(2), 4, 4).as_deref(),
            Some("paused: round 2 still finishes, then no new round starts")
        );
        assert_eq!(waiting_for(RunStatus::Finished, None, 0, 4), None);
    }

    #[test]
    fn the_charged_epsilon_says_what_it_includes() {
        let mut c = ClientInfo {
            client_id: 1,
            name: "tab".into(),
            state: ClientState::Idle,
            num_examples: Some(6000),
            shard_index: Some(0),
            own_data: false,
            connected_at_ms: 0,
            rounds: 3,
            failures: 0,
            epsilon: Some(2.69),
            epsilon_pending: false,
            collusion_epsilon: None,
            rdp_epsilon: None,
            refuses: false,
            left: None,
        };
        assert_eq!(charged_text(&c), "2.690");
        // The tight ε first, RDP's for the same ledger beside it.
        c.rdp_epsilon = Some(2.95);
        assert_eq!(charged_text(&c), "2.690 · RDP 2.950");
        c.rdp_epsilon = None;
        // While the server computes the tight ε of a new charge, RDP's stands in, named.
        c.epsilon_pending = true;
        c.epsilon = Some(2.95);
        assert_eq!(charged_text(&c), "2.950 by RDP (tight ε being computed)");
        c.epsilon_pending = false;
        c.epsilon = Some(2.69);
        assert_eq!(state_text(&c), "idle");
        // A capped client that refused its last two rounds: still charged, and said so.
        c.failures = 2;
        c.refuses = true;
        c.epsilon = Some(3.0);
        assert_eq!(charged_text(&c), "3.000 (incl. 2 failed rounds)");
        assert_eq!(
            state_text(&c),
            "idle · refuses further rounds (its budget is spent)"
        );
        c.collusion_epsilon = Some(41.26);
        assert_eq!(
            charged_text(&c),
            "3.000 (incl. 2 failed rounds) · 41.3 whatever the others do"
        );
        c.epsilon = None;
        assert_eq!(charged_text(&c), "—");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration_text(45.7), "45 s");
        assert_eq!(duration_text(12.0 * 60.0 + 5.0), "12 min");
        assert_eq!(duration_text(3.0 * 3600.0 + 5.0 * 60.0), "3 h 05 min");
        assert_eq!(duration_text(-1.0), "0 s");
    }
}
