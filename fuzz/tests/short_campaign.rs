//! A short fuzzing campaign for CI (the long one is a benchmark: BENCHMARKS.md): every decoder a
//! peer reaches (and the aggregation rules on what it sends), 20 000 mutated inputs each, no
//! panic and no broken promise.

#[test]
fn no_decoder_panics_on_mutated_input() {
    fuzz::quiet_panics();
    let reports: Vec<_> = fuzz::targets()
        .iter()
        .enumerate()
        .map(|(i, t)| fuzz::fuzz(t, 20_000, 7 + i as u64))
        .collect();
    let _ = std::panic::take_hook();
    for r in &reports {
        assert_eq!(r.panics, 0, "{}: {:?}", r.name, r.first_panic);
    }
    assert_eq!(reports.len(), 11);
}
