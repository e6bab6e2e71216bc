//! The simulated shop of `oxeye-demo` as a library: its services ([`shop`], [`catalog`]), the
//! simulation helpers they share ([`sim`]) and one OpenTelemetry SDK pipeline per service
//! ([`telemetry`]). The `oxeye-demo` binary exports it over OTLP; the load generator's
//! `--workload demo` runs the same simulation into memory and sends it at load-test rates.

pub mod catalog;
pub mod shop;
pub mod sim;
pub mod telemetry;
