//! Seeded, realistic OTLP telemetry for load tests and benchmarks (the `oxeye-loadgen` binary
//! sends it; the benchmark suite measures with it).

pub mod demo;
pub mod shapes;
