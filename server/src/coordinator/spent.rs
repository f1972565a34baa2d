//! Each client's tight ε, and σ for each shard size, computed off the coordinator task.
//!
//! Why: the tight (PLD) ε of one ledger takes 40–90 ms, and a σ solve under it 0.3–0.7 s.
//! Clients of one shard size share a ledger and a σ (one computation, remembered), but with a
//! shard size each — Dirichlet shards or own data, and a batch size — 1 000 clients are ≈ 30 s
//! of one core per round and minutes of σ, while the coordinator task must answer every
//! socket. So the coordinator only notices what changed (`accounting_due`) and hands copies to
//! two blocking jobs, one of each kind at a time:
//! * σ for the connected clients' new shard sizes, into the strategy's cache. A client whose σ
//!   is not solved yet is left out of plans until it is (a flood of new sizes delays those
//!   clients, never the others' rounds).
//! * the tight ε of each ledger charged since it was accounted, with the budget checks its
//!   next round will make (the ledger plus the step the client would be given, against the
//!   run's target and the client's own cap), which land in `learning::pld`'s memo for the plan.
//!   A plan waits for this job, and a round is recorded once its charges are accounted (its
//!   record holds the largest tight ε).
//!
//! Until a ledger's job is done, what the pages show for it is RDP's ε of the same ledger,
//! marked as pending: an upper bound, never a number below what was charged.

use std::collections::HashMap;

use learning::accountant::{Mechanism, PrivacyLedger};
use protocol::config::EVAL_NOISE_MULTIPLIER;
use tracing::warn;

use super::{Conn, Coordinator};

/// One client's ledger to account, and the budget checks its next round would need.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub key: String,
    pub ledger: PrivacyLedger,
    pub checks: Vec<Check>,
}

/// "Would `steps` more of `mechanism` keep the ledger within `cap` at `delta`?"
#[derive(Debug, Clone, Copy)]
pub(super) struct Check {
    pub mechanism: Mechanism,
    pub steps: u64,
    pub cap: f64,
    pub delta: f64,
}

/// A ledger's tight ε, and which ledger it is of.
#[derive(Debug, Clone)]
pub(super) struct Accounted {
    pub key: String,
    pub ledger: PrivacyLedger,
    pub epsilon: Option<f64>,
}

/// What the pages show of one ledger.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Shown {
    pub epsilon: f64,
    /// `epsilon` is RDP's: the tight ε of this ledger is being computed.
    pub pending: bool,
}

/// The tight ε of the ledgers accounted so far, by client key (one run's).
#[derive(Debug, Default)]
pub(super) struct SpentBoard {
    known: HashMap<String, Accounted>,
}

impl SpentBoard {
    /// Whether `ledger` has been accounted as it is now.
    fn current(&self, key: &str, ledger: &PrivacyLedger) -> Option<&Accounted> {
        self.known.get(key).filter(|a| &a.ledger == ledger)
    }

    /// Whether `ledger` needs the job: a Gaussian ledger with steps whose tight ε is not known.
    /// (A ledger with distributed-DP rounds has only RDP's ε, computed on the spot: 1 ms.)
    pub fn needs_accounting(&self, key: &str, ledger: &PrivacyLedger) -> bool {
        ledger.skellam.is_empty() && ledger.steps() > 0 && self.current(key, ledger).is_none()
    }

    /// The ε the pages show for `ledger` at `delta`: the tight one once accounted, RDP's (an
    /// upper bound, marked pending) until then.
    pub fn shown(&self, key: &str, ledger: &PrivacyLedger, delta: f64) -> Option<Shown> {
        let (epsilon, pending) = match self.current(key, ledger) {
            Some(Accounted {
                epsilon: Some(e), ..
            }) => (*e, false),
            // The job could not compute it (a bug, logged): RDP's, an upper bound, for good.
            Some(_) => (ledger.rdp_epsilon(delta).ok()?, false),
            // Nothing spent, or distributed-DP rounds (RDP's ε is the ε): computed on the spot.
            None if !self.needs_accounting(key, ledger) => (ledger.epsilon(delta).ok()?, false),
            None => (ledger.rdp_epsilon(delta).ok()?, true),
        };
        Some(Shown { epsilon, pending })
    }

    /// The largest tight ε of `ledgers`, exactly, computing on the spot only what could be it:
    /// the unaccounted ledgers whose RDP ε (an upper bound of their tight one) is above the
    /// largest known, largest first.
    pub fn largest<'a>(
        &self,
        ledgers: impl Iterator<Item = (&'a str, &'a PrivacyLedger)>,
        delta: f64,
    ) -> Option<f64> {
        let mut largest: Option<f64> = None;
        let mut unknown = Vec::new();
        for (key, ledger) in ledgers {
            match self.shown(key, ledger, delta) {
                Some(s) if s.pending => unknown.push((s.epsilon, ledger)),
                Some(s) => largest = Some(largest.map_or(s.epsilon, |m| m.max(s.epsilon))),
                None => {}
            }
        }
        unknown.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (rdp, ledger) in unknown {
            if largest.is_some_and(|m| m >= rdp) {
                break;
            }
            if let Ok(e) = ledger.epsilon(delta) {
                largest = Some(largest.map_or(e, |m| m.max(e)));
            }
        }
        largest
    }

    /// Whether any of `rows` needs the job.
    pub fn needs_any(&self, rows: &HashMap<String, crate::store::ClientRow>) -> bool {
        rows.iter()
            .any(|(key, row)| self.needs_accounting(key, &row.ledger))
    }

    /// Keeps a job's results.
    pub fn absorb(&mut self, done: Vec<Accounted>) {
        for a in done {
            self.known.insert(a.key.clone(), a);
        }
    }
}

/// The job: every task's tight ε at `delta`, and its checks (for the memo), spread over the
/// machine's cores; runs on a blocking thread.
pub(super) fn account(tasks: Vec<Task>, delta: f64) -> Vec<Accounted> {
    crate::par_map(&tasks, |t| account_one(t, delta))
}

/// One task. A panic (a bug) leaves its ε unknown rather than the job failing and starting
/// again forever: the pages then show RDP's ε for good (see `SpentBoard::shown`).
fn account_one(task: &Task, delta: f64) -> Accounted {
    let epsilon = std::panic::catch_unwind(|| {
        for c in &task.checks {
            // The answer is not needed here: computing it leaves the tight ε in the memo.
            let _ = task.ledger.allows(c.mechanism, c.steps, c.delta, c.cap);
        }
        task.ledger.epsilon(delta).ok()
    })
    .unwrap_or(None);
    Accounted {
        key: task.key.clone(),
        ledger: task.ledger.clone(),
        epsilon,
    }
}

impl Coordinator {
    /// Starts what the jobs have to do, if anything changed since they last looked: σ for the
    /// connected clients' new shard sizes (the strategy's
    /// [`prepare`](crate::strategy::Strategy::prepare)), and the tight ε of the run's ledgers
    /// charged since they were accounted, with the checks of their next round. One job of each
    /// kind at a time.
    pub(super) fn start_accounting(&mut self) {
        if !std::mem::take(&mut self.accounting_due) {
            return;
        }
        let Some(run) = self.run.as_ref() else { return };
        let Some(delta) = run.delta() else { return };
        if self.sigma_job.is_none()
            && !self.prepare_failed
            && run.summary.status == protocol::admin::RunStatus::Running
        {
            let sizes: Vec<u64> = self
                .clients
                .values()
                .filter_map(|c| c.num_examples)
                .collect();
            if let Some(work) = run.strategy.prepare(&sizes) {
                self.sigma_job = Some(tokio::task::spawn_blocking(work));
            }
        }
        if self.ledger_job.is_some() {
            // Looked at again when it ends.
            return;
        }
        let tasks = self.ledger_tasks(run, delta);
        if !tasks.is_empty() {
            let run_id = run.id();
            self.ledger_job = Some(tokio::task::spawn_blocking(move || {
                (run_id, account(tasks, delta))
            }));
        }
    }

    /// The run's ledgers whose tight ε is not known, each with its next round's checks.
    fn ledger_tasks(&self, run: &super::ActiveRun, delta: f64) -> Vec<Task> {
        let stale: Vec<(&String, &PrivacyLedger)> = run
            .clients
            .iter()
            .filter(|(key, row)| run.spent.needs_accounting(key, &row.ledger))
            .map(|(key, row)| (key, &row.ledger))
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        let by_key: HashMap<&str, &Conn> =
            self.clients.values().map(|c| (c.key.as_str(), c)).collect();
        stale
            .into_iter()
            .map(|(key, ledger)| Task {
                key: key.clone(),
                ledger: ledger.clone(),
                checks: by_key
                    .get(key.as_str())
                    .map_or_else(Vec::new, |conn| next_checks(run, conn, delta)),
            })
            .collect()
    }

    /// A ledger job's end: its ε are kept (if its run is still the active one), and a round
    /// waiting for them is recorded.
    pub(super) fn on_accounted(
        &mut self,
        res: Result<(u64, Vec<Accounted>), tokio::task::JoinError>,
    ) {
        self.accounting_due = true;
        match res {
            Ok((run_id, done)) => {
                if let Some(run) = self.run.as_mut().filter(|r| r.id() == run_id) {
                    run.spent.absorb(done);
                }
            }
            // Each ledger's panic is caught in the job: only a thread failing to start gets
            // here. The ledgers are looked at again.
            Err(e) => warn!(error = %e, "the accounting job failed; it runs again"),
        }
        self.maybe_commit();
    }

    /// A σ job's end: its answers are in the strategy's cache.
    pub(super) fn on_solved(&mut self, res: Result<(), tokio::task::JoinError>) {
        self.accounting_due = true;
        if let Err(e) = res {
            // A bug, which would fail again: plans solve σ themselves for the rest of the run.
            warn!(error = %e, "solving σ ahead failed: plans solve it on the coordinator");
            self.prepare_failed = true;
        }
    }

    /// Whether a plan must wait: the ledger job would leave the plan's budget checks in the
    /// memo (the plan would compute them on this task).
    pub(super) fn accounting_pending(&self) -> bool {
        self.ledger_job.is_some()
    }

    /// Whether a client of `n` examples can be planned for: its σ is solved (or is solved by
    /// the plan itself, when the job has failed).
    pub(super) fn ready_to_plan(&self, run: &super::ActiveRun, n: u64) -> bool {
        self.prepare_failed || run.strategy.ready(n)
    }
}

/// The ε columns of a client's row in the clients table.
#[derive(Debug, Default)]
pub(super) struct Columns {
    pub epsilon: Option<f64>,
    /// `epsilon` is RDP's until the tight ε is computed.
    pub pending: bool,
    pub collusion: Option<f64>,
    /// RDP's ε beside the tight one (not while pending: it is `epsilon` then).
    pub rdp: Option<f64>,
}

impl super::ActiveRun {
    /// What the clients table shows of `key`'s ledger in this run.
    pub(super) fn spent_columns(&self, key: &str) -> Columns {
        let (Some(delta), Some(row)) = (self.delta(), self.clients.get(key)) else {
            return Columns::default();
        };
        let shown = self.spent.shown(key, &row.ledger, delta);
        let pending = shown.is_some_and(|s| s.pending);
        Columns {
            epsilon: shown.map(|s| s.epsilon),
            pending,
            collusion: crate::store::collusion_epsilon(&row.ledger, delta),
            rdp: if pending {
                None
            } else {
                crate::store::rdp_epsilon(&row.ledger, delta)
            },
        }
    }
}

/// The budget checks a connected client's next round would make: its next round's steps (as
/// the run's strategy would configure them) against the run's target ε and against the
/// client's own cap, and a DP evaluation against its cap.
fn next_checks(run: &super::ActiveRun, conn: &Conn, run_delta: f64) -> Vec<Check> {
    let mut checks = Vec::new();
    let cap = conn
        .caps
        .epsilon_cap
        .map(|cap| (cap, conn.caps.delta.unwrap_or(run_delta)));
    let target = run
        .summary
        .config
        .dp
        .and_then(|dp| dp.target_epsilon)
        .map(|t| (t, run_delta));
    // Only with σ solved: `train_config` would otherwise solve it here, on the coordinator task
    // (its checks are then warmed by the job after the σ job).
    let next = conn
        .num_examples
        .filter(|&n| run.strategy.ready(n))
        .and_then(|n| {
            let config = run.strategy.train_config(n)?;
            learning::client::round_mechanism(&config, n as usize)
        });
    if let Some((mechanism, steps)) = next {
        for (cap, delta) in target.into_iter().chain(cap) {
            checks.push(Check {
                mechanism,
                steps,
                cap,
                delta,
            });
        }
    }
    if let Some((cap, delta)) = cap.filter(|_| conn.caps.can_evaluate) {
        checks.push(Check {
            mechanism: Mechanism::Gaussian {
                sample_rate: 1.0,
                noise_multiplier: EVAL_NOISE_MULTIPLIER,
            },
            steps: 1,
            cap,
            delta,
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(n: f64, steps: u64) -> PrivacyLedger {
        PrivacyLedger::of(512.0 / n, 1.83, steps).unwrap()
    }

    fn task(key: &str, ledger: PrivacyLedger) -> Task {
        Task {
            key: key.into(),
            ledger,
            checks: Vec::new(),
        }
    }

    #[test]
    fn an_unaccounted_ledger_shows_rdp_as_pending_then_the_tight_epsilon() {
        let mut board = SpentBoard::default();
        let l = ledger(6000.0, 120);
        let before = board.shown("a", &l, 1e-5).unwrap();
        assert!(before.pending);
        assert_eq!(before.epsilon, l.rdp_epsilon(1e-5).unwrap());
        board.absorb(account(vec![task("a", l.clone())], 1e-5));
        let after = board.shown("a", &l, 1e-5).unwrap();
        assert!(!after.pending);
        assert_eq!(after.epsilon, l.epsilon(1e-5).unwrap());
        assert!(after.epsilon < before.epsilon, "the tight ε is below RDP's");
    }

    /// A charge after the job makes the ledger pending again: the old tight ε, now below what
    /// was charged, is never shown for the new ledger.
    #[test]
    fn a_charge_after_the_job_is_never_shown_with_the_old_epsilon() {
        let mut board = SpentBoard::default();
        let l = ledger(6000.0, 120);
        board.absorb(account(vec![task("a", l.clone())], 1e-5));
        let mut charged = l.clone();
        charged.record(512.0 / 6000.0, 1.83, 12).unwrap();
        let shown = board.shown("a", &charged, 1e-5).unwrap();
        assert!(shown.pending);
        assert!(shown.epsilon >= charged.epsilon(1e-5).unwrap());
        assert!(board.needs_accounting("a", &charged));
        assert!(!board.needs_accounting("a", &l));
    }

    #[test]
    fn the_largest_is_exact_whichever_ledgers_are_accounted() {
        let ledgers: Vec<(String, PrivacyLedger)> = (0..6)
            .map(|i| {
                (
                    format!("c{i}"),
                    ledger(3000.0 + 500.0 * i as f64, 60 + 10 * i),
                )
            })
            .collect();
        let exact = ledgers
            .iter()
            .map(|(_, l)| l.epsilon(1e-5).unwrap())
            .fold(0.0, f64::max);
        let mut board = SpentBoard::default();
        fn of(ls: &[(String, PrivacyLedger)]) -> impl Iterator<Item = (&str, &PrivacyLedger)> {
            ls.iter().map(|(k, l)| (k.as_str(), l))
        }
        assert_eq!(
            board.largest(of(&ledgers), 1e-5),
            Some(exact),
            "none accounted"
        );
        let some = ledgers[..3]
            .iter()
            .map(|(k, l)| task(k, l.clone()))
            .collect();
        board.absorb(account(some, 1e-5));
        assert_eq!(
            board.largest(of(&ledgers), 1e-5),
            Some(exact),
            "half accounted"
        );
        let all = ledgers.iter().map(|(k, l)| task(k, l.clone())).collect();
        board.absorb(account(all, 1e-5));
        assert_eq!(
            board.largest(of(&ledgers), 1e-5),
            Some(exact),
            "all accounted"
        );
        assert_eq!(board.largest(std::iter::empty(), 1e-5), None);
    }

    /// The job, spread over threads, answers every task once, with the ledger it accounted
    /// and that ledger's tight ε (its checks near a cap do not change the answer).
    #[test]
    fn the_job_answers_every_task_and_keeps_each_ledger() {
        let tasks: Vec<Task> = (0..5)
            .map(|i| Task {
                checks: vec![Check {
                    mechanism: Mechanism::Gaussian {
                        sample_rate: 512.0 / 6000.0,
                        noise_multiplier: 1.83,
                    },
                    steps: 12,
                    cap: 1.0,
                    delta: 1e-5,
                }],
                ..task(&format!("c{i}"), ledger(6000.0 - i as f64, 120))
            })
            .collect();
        let mut done = account(tasks.clone(), 1e-5);
        done.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(done.len(), 5);
        for (t, a) in tasks.iter().zip(&done) {
            assert_eq!(t.key, a.key);
            assert_eq!(t.ledger, a.ledger);
            assert_eq!(a.epsilon, Some(t.ledger.epsilon(1e-5).unwrap()));
        }
    }
}
