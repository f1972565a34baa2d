//! What a gateway holds for the round: each client's checked vector until the coordinator judges
//! it, and the running sum of those it accepted. Pure (no bus), so that what a hostile client
//! can do to its gateway's sum is tested without a network.

use std::collections::HashMap;

use learning::FedAvg;

use super::Up;
use crate::coordinator::{RoundRef, VectorKind};

/// The clients' vectors waiting for the coordinator's answer, and the round's sum.
#[derive(Default)]
pub struct Holdings {
    /// One per client, so a client cannot make the gateway hold more than one model's worth: a
    /// newer result replaces it (a retried attempt of the round sends one; the coordinator's
    /// `Accept` names the kind and weight it judged, so a swap it did not see is not folded).
    /// Kept when the client leaves: the coordinator may have accepted it already. Dropped once
    /// its round is collected.
    held: HashMap<u64, Held>,
    /// The running sum of the accepted vectors of the round being collected.
    sum: Option<(RoundRef, RoundSum)>,
}

/// A client's checked vector at the gateway.
struct Held {
    server_round: u64,
    num_examples: u64,
    vector: HeldVector,
}

/// The vector itself.
pub enum HeldVector {
    Update(Vec<f32>),
    Masked(Vec<u32>),
}

impl HeldVector {
    pub fn kind(&self) -> VectorKind {
        match self {
            Self::Update(_) => VectorKind::Update,
            Self::Masked(_) => VectorKind::Masked,
        }
    }
}

/// A round's sum of accepted vectors, and whose they are.
struct RoundSum {
    clients: Vec<u64>,
    total_weight: u64,
    of: SumOf,
}

enum SumOf {
    /// FedAvg's Σ num_examples·update (it keeps the total weight too).
    Updates(FedAvg),
    /// Σ masked vectors mod 2³²: unmasked only at the coordinator, for the sum of the sums.
    Masked(Vec<u32>),
}

impl RoundSum {
    fn new(first: &HeldVector) -> Self {
        let of = match first {
            HeldVector::Update(u) => SumOf::Updates(FedAvg::new(u.len())),
            HeldVector::Masked(m) => SumOf::Masked(vec![0; m.len()]),
        };
        Self {
            clients: Vec::new(),
            total_weight: 0,
            of,
        }
    }

    /// Folds in one client's vector; refused if it is of the other kind or length, or the
    /// weights overflow.
    fn add(&mut self, client_id: u64, held: &Held) -> Result<(), String> {
        let total = self
            .total_weight
            .checked_add(held.num_examples)
            .ok_or("the round's total weight overflows")?;
        match (&mut self.of, &held.vector) {
            (SumOf::Updates(sum), HeldVector::Update(u)) => {
                sum.add(u, held.num_examples).map_err(|e| e.to_string())?
            }
            (SumOf::Masked(sum), HeldVector::Masked(m)) if sum.len() == m.len() => {
                secagg::add_into(sum, m, 1)
            }
            _ => return Err("a vector of another kind or length than the round's others".into()),
        }
        self.total_weight = total;
        self.clients.push(client_id);
        Ok(())
    }

    /// The `Up::Partial` for it, and its payload.
    fn into_partial(self, round: RoundRef) -> (Up, Vec<u8>) {
        let (kind, payload) = match &self.of {
            SumOf::Updates(sum) => (VectorKind::Update, super::f64s_to_bytes(sum.sum())),
            SumOf::Masked(sum) => (VectorKind::Masked, super::u32s_to_bytes(sum)),
        };
        let partial = Up::Partial {
            round,
            kind,
            count: self.clients.len(),
            clients: self.clients,
            total_weight: self.total_weight,
        };
        (partial, payload)
    }
}

impl Holdings {
    /// Holds a client's checked vector (replacing what it held for it): its kind.
    pub fn hold(
        &mut self,
        client_id: u64,
        server_round: u64,
        num_examples: u64,
        vector: HeldVector,
    ) -> VectorKind {
        let kind = vector.kind();
        let held = Held {
            server_round,
            num_examples,
            vector,
        };
        self.held.insert(client_id, held);
        kind
    }

    /// The coordinator accepted the client's vector of this round, kind and weight: into the
    /// round's sum — if that is what is held (the client may have sent another since the one
    /// judged; a swap to the other kind would otherwise set the sum's kind and refuse everyone
    /// else's). A refusal leaves this client alone out of the sum.
    pub fn accept(
        &mut self,
        client_id: u64,
        round: RoundRef,
        kind: VectorKind,
        num_examples: u64,
    ) -> Result<(), String> {
        let held = self
            .held
            .remove(&client_id)
            .ok_or("accepted a vector this gateway does not hold")?;
        if held.server_round != round.server_round
            || held.num_examples != num_examples
            || held.vector.kind() != kind
        {
            return Err(format!(
                "accepted a vector other than the one held (round {}, weight {}, {:?})",
                held.server_round,
                held.num_examples,
                held.vector.kind()
            ));
        }
        // The coordinator runs one round at a time: a sum of another round or attempt was
        // abandoned, and must not count for this one.
        if self.sum.as_ref().is_none_or(|(r, _)| *r != round) {
            self.sum = Some((round, RoundSum::new(&held.vector)));
        }
        match self.sum.as_mut() {
            Some((_, sum)) => sum.add(client_id, &held),
            None => Ok(()),
        }
    }

    /// The client's held update of this round, taken out to be sent whole.
    pub fn take_update(&mut self, client_id: u64, server_round: u64) -> Option<(u64, Vec<f32>)> {
        let held = self.held.remove(&client_id)?;
        match held.vector {
            HeldVector::Update(update) if held.server_round == server_round => {
                Some((held.num_examples, update))
            }
            _ => None,
        }
    }

    /// The round's sum as an `Up::Partial` and its payload (empty if nothing of that round was
    /// accepted); what is held for it or earlier, or for clients no longer `connected`, goes.
    pub fn collect(&mut self, round: RoundRef, connected: impl Fn(u64) -> bool) -> (Up, Vec<u8>) {
        let partial = match self.sum.take() {
            Some((r, sum)) if r == round => sum.into_partial(round),
            _ => RoundSum {
                clients: Vec::new(),
                total_weight: 0,
                of: SumOf::Updates(FedAvg::new(0)),
            }
            .into_partial(round),
        };
        self.held
            .retain(|&c, h| h.server_round > round.server_round && connected(c));
        partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND: RoundRef = RoundRef {
        run_id: 1,
        server_round: 3,
        attempt: 1,
    };

    fn update(v: f32) -> HeldVector {
        HeldVector::Update(vec![v; 4])
    }

    fn partial(h: &mut Holdings, round: RoundRef) -> (Vec<u64>, u64, VectorKind) {
        match h.collect(round, |_| true) {
            (
                Up::Partial {
                    clients,
                    total_weight,
                    kind,
                    ..
                },
                _,
            ) => (clients, total_weight, kind),
            other => panic!("{other:?}"),
        }
    }

    /// A client that swaps its held update for a masked vector (or another weight) after the
    /// coordinator judged the first: its swap is not folded and it alone is missing from the
    /// sum; the other clients' updates and the sum's kind stand.
    #[test]
    fn a_client_swapping_its_vector_after_judgement_leaves_only_itself_out() {
        let mut h = Holdings::default();
        h.hold(1, 3, 10, update(1.0));
        h.hold(2, 3, 10, update(2.0));
        // Judged as an update of weight 10; then swapped for a masked vector and another weight.
        h.hold(1, 3, 10, HeldVector::Masked(vec![7; 5]));
        assert!(h.accept(1, ROUND, VectorKind::Update, 10).is_err());
        h.accept(2, ROUND, VectorKind::Update, 10).unwrap();
        h.hold(3, 3, 10, update(3.0));
        h.hold(3, 3, 99, update(3.0));
        assert!(h.accept(3, ROUND, VectorKind::Update, 10).is_err());
        assert_eq!(partial(&mut h, ROUND), (vec![2], 10, VectorKind::Update));
    }

    /// A sum of an abandoned attempt never counts for the retry of the same round, and a
    /// collect of another round or attempt finds nothing.
    #[test]
    fn an_abandoned_attempt_s_sum_is_not_the_retry_s() {
        let mut h = Holdings::default();
        h.hold(1, 3, 10, update(1.0));
        h.accept(1, ROUND, VectorKind::Update, 10).unwrap();
        let retry = RoundRef {
            attempt: 2,
            ..ROUND
        };
        h.hold(2, 3, 20, update(2.0));
        h.accept(2, retry, VectorKind::Update, 20).unwrap();
        assert_eq!(partial(&mut h, retry), (vec![2], 20, VectorKind::Update));
        assert_eq!(partial(&mut h, ROUND).0, Vec::<u64>::new());
    }

    /// Masked vectors add up modulo 2³² (they wrap), with their declared weights.
    #[test]
    fn masked_vectors_add_modulo_2_32() {
        let mut h = Holdings::default();
        h.hold(1, 3, 5, HeldVector::Masked(vec![u32::MAX, 1]));
        h.hold(2, 3, 6, HeldVector::Masked(vec![2, 3]));
        h.accept(1, ROUND, VectorKind::Masked, 5).unwrap();
        h.accept(2, ROUND, VectorKind::Masked, 6).unwrap();
        let (up, payload) = h.collect(ROUND, |_| true);
        assert!(matches!(
            up,
            Up::Partial {
                kind: VectorKind::Masked,
                total_weight: 11,
                count: 2,
                ..
            }
        ));
        let sum: Vec<u32> = super::super::words(&payload, 2)
            .unwrap()
            .map(u32::from_le_bytes)
            .collect();
        assert_eq!(sum, [1, 4]);
    }

    /// What is held for a collected round, or for a client that left, goes; a later round's
    /// vector of a connected client stays.
    #[test]
    fn collecting_drops_what_the_round_and_departed_clients_left() {
        let mut h = Holdings::default();
        h.hold(1, 3, 10, update(1.0));
        h.hold(2, 4, 10, update(2.0));
        h.hold(3, 4, 10, update(3.0));
        h.collect(ROUND, |c| c != 3);
        assert!(h.take_update(1, 3).is_none());
        assert!(h.take_update(3, 4).is_none());
        assert_eq!(h.take_update(2, 4).map(|(n, _)| n), Some(10));
    }
}
