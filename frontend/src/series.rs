//! Per-round series for the dashboard charts (accuracy, loss, ε, participants and failures,
//! duration).
//!
//! Charts are updated in place, never recreated: a round's point is inserted once, and a point
//! for a round already shown (a resent event after a reconnect, or a server that resumed from
//! a checkpoint) replaces it instead of drawing the round twice.

use serde::{Deserialize, Serialize};

/// A value measured, or none: the server and the training worker send NaN for one that was not
/// (a round not evaluated, a distributed step's local loss).
pub fn finite(x: f64) -> Option<f64> {
    Some(x).filter(|x| x.is_finite())
}

/// One closed round as the dashboard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    pub server_round: u64,
    /// The global model's test accuracy and loss; none when the server did not evaluate after
    /// this round (a distributed-DP run evaluates every few rounds).
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    /// ε spent so far (None without DP).
    pub epsilon: Option<f64>,
    pub participants: u32,
    /// Sampled clients that failed the round (errors, refusals, disconnects, the deadline).
    pub failures: u32,
    /// Secure aggregation: clients that dropped after sharing and whose masks were removed.
    pub recovered: u32,
    pub duration_secs: f64,
}

impl From<&protocol::admin::RoundRecord> for RoundPoint {
    fn from(r: &protocol::admin::RoundRecord) -> Self {
        Self {
            server_round: r.server_round,
            accuracy: finite(r.test_accuracy),
            loss: finite(r.test_loss),
            epsilon: r.epsilon,
            participants: u32::try_from(r.participants).unwrap_or(u32::MAX),
            failures: u32::try_from(r.failures).unwrap_or(u32::MAX),
            recovered: u32::try_from(r.recovered).unwrap_or(u32::MAX),
            duration_secs: r.duration_ms as f64 / 1000.0,
        }
    }
}

/// What changed, so the chart binding knows whether to insert a point (at the end, unless a
/// late event fills a gap) or to rewrite one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Inserted(usize),
    Replaced(usize),
}

/// Points ordered by round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    points: Vec<RoundPoint>,
}

impl Series {
    /// Adds or replaces the point of `p.server_round`, keeping rounds in order.
    pub fn upsert(&mut self, p: RoundPoint) -> Change {
        match self
            .points
            .binary_search_by_key(&p.server_round, |q| q.server_round)
        {
            Ok(i) => {
                self.points[i] = p;
                Change::Replaced(i)
            }
            Err(i) => {
                self.points.insert(i, p);
                Change::Inserted(i)
            }
        }
    }

    pub fn points(&self) -> &[RoundPoint] {
        &self.points
    }

    /// Best accuracy so far and its round (of the rounds evaluated after).
    pub fn best_accuracy(&self) -> Option<(u64, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.server_round, p.accuracy?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The metrics as CSV (the dashboard's download), one row per round.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "server_round,accuracy,loss,epsilon,participants,failures,recovered,duration_secs\n",
        );
        // An empty field where there is no value (not evaluated, no DP).
        let field = |x: Option<f64>| x.map_or(String::new(), |x| x.to_string());
        for p in &self.points {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{}\n",
                p.server_round,
                field(p.accuracy),
                field(p.loss),
                field(p.epsilon),
                p.participants,
                p.failures,
                p.recovered,
                p.duration_secs
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(round: u64, acc: f64) -> RoundPoint {
        RoundPoint {
            server_round: round,
            accuracy: Some(acc),
            loss: Some(1.0 - acc),
            epsilon: Some(round as f64 * 0.5),
            participants: 3,
            failures: round as u32 % 2,
            recovered: 0,
            duration_secs: 2.5,
        }
    }

    #[test]
    fn appends_in_order_and_replaces_a_resent_round() {
        let mut s = Series::default();
        assert_eq!(s.upsert(p(1, 0.8)), Change::Inserted(0));
        assert_eq!(s.upsert(p(3, 0.9)), Change::Inserted(1));
        assert_eq!(s.upsert(p(2, 0.85)), Change::Inserted(1));
        assert_eq!(s.upsert(p(3, 0.95)), Change::Replaced(2));
        let rounds: Vec<u64> = s.points().iter().map(|q| q.server_round).collect();
        assert_eq!(rounds, vec![1, 2, 3]);
        assert_eq!(s.best_accuracy(), Some((3, 0.95)));
    }

    #[test]
    fn rounds_not_evaluated_are_no_value_not_nan() {
        // As the server's history has them: a distributed run evaluated at round 2 only.
        let record = |server_round, test_accuracy: f64| protocol::admin::RoundRecord {
            server_round,
            started_at_ms: 0,
            duration_ms: 40,
            aggregate_ms: 1.0,
            test_loss: if test_accuracy.is_nan() {
                f64::NAN
            } else {
                0.4
            },
            test_accuracy,
            federated_loss: None,
            federated_accuracy: None,
            participants: 3,
            failures: 0,
            epsilon: None,
            attempts: 1,
            secure: true,
            recovered: 0,
            keys_reused: true,
        };
        let mut s = Series::default();
        for r in [record(1, f64::NAN), record(2, 0.5), record(3, f64::NAN)] {
            s.upsert(RoundPoint::from(&r));
        }
        assert_eq!(s.points()[0].accuracy, None);
        // A NaN sorts above every number: it was the "best test accuracy NaN %".
        assert_eq!(s.best_accuracy(), Some((2, 0.5)));
        assert!(!s.to_csv().contains("NaN"), "{}", s.to_csv());
        assert_eq!(s.to_csv().lines().nth(1), Some("1,,,,3,0,0,0.04"));
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_round() {
        let mut s = Series::default();
        s.upsert(p(1, 0.5));
        s.upsert(RoundPoint {
            epsilon: None,
            ..p(2, 0.75)
        });
        assert_eq!(
            s.to_csv(),
            "server_round,accuracy,loss,epsilon,participants,failures,recovered,duration_secs\n1,0.5,0.5,0.5,3,1,0,2.5\n2,0.75,0.25,,3,0,0,2.5\n"
        );
    }
}
