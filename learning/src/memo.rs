//! A small memo for the accountants' results, which keeps what was asked lately.
//!
//! The server asks the same questions again and again (every client of a shard size holds the
//! same ledger; each plan checks every client; the pages re-read every ε), and one answer costs
//! from a millisecond (an RDP curve) to tens of them (a tight ε). Two generations: when the
//! newer is full it becomes the older and the oldest is dropped, so what was asked or read in
//! the last generation survives (clearing it all had thrown away the server's accounting job's
//! work just before the plan read it).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) struct Memo<K, V> {
    newer: BTreeMap<K, V>,
    older: BTreeMap<K, V>,
    /// Entries per generation.
    size: usize,
}

impl<K: Ord + Clone, V: Clone> Memo<K, V> {
    pub(crate) const fn new(size: usize) -> Self {
        Self {
            newer: BTreeMap::new(),
            older: BTreeMap::new(),
            size,
        }
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.newer.get(key) {
            return Some(v.clone());
        }
        let v = self.older.remove(key)?;
        self.insert(key.clone(), v.clone());
        Some(v)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        // (A key already there is replaced, not counted again: the job and a plan may both
        // compute the same ε.)
        if !self.newer.contains_key(&key) && self.newer.len() >= self.size {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(key, value);
    }

    pub(crate) fn clear(&mut self) {
        self.newer.clear();
        self.older.clear();
    }
}

/// A memo's lock even after a panic elsewhere held it: a memo only ever holds complete
/// answers, and turning it off for good would make every later question slow.
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full memo keeps what was asked lately: the newer generation, and what was read from
    /// the older one; only what was neither inserted nor read in the last generation goes.
    #[test]
    fn a_full_memo_keeps_what_was_asked_lately() {
        let mut memo = Memo::new(100);
        for i in 0..100u64 {
            memo.insert(i, i as f64);
        }
        memo.insert(u64::MAX, 0.5);
        assert_eq!(memo.get(&7), Some(7.0), "read from the older generation");
        for i in 0..100 {
            memo.insert(1_000_000 + i, 0.0);
        }
        assert_eq!(memo.get(&7), Some(7.0), "it was read lately: kept");
        assert_eq!(memo.get(&u64::MAX), Some(0.5), "inserted lately: kept");
        assert_eq!(memo.get(&8), None, "neither inserted nor read lately: gone");
        memo.clear();
        assert_eq!(memo.get(&7), None);
    }
}
