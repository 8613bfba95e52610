//! Criterion micro-benchmarks live in `benches/`; see BENCHMARKING.md.
