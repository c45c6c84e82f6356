//! meterline: Kafka-native, exactly-once usage metering.
//!
//! CloudEvents usage events in, balanced and idempotent ERP postings out,
//! through seven stages joined by Kafka topics: validate -> dedupe -> enrich ->
//! rate -> aggregate -> post -> invoice. Start with ARCHITECTURE.md; the modules
//! map onto it:
//!
//! * [`config`], [`kafka`], [`topology`]: what to connect to and which topics exist;
//! * [`runtime`] and [`store`]: the exactly-once loop and its RocksDB state;
//! * [`stages`]: the stage logic, one folder per stage;
//! * [`contracts`]: the records stages exchange; [`meter`]: the meter catalog;
//! * [`replay`], [`metrics`], [`internal_events`], [`http`]: operations;
//! * [`reason`]: the reason codes of every stage, declared once.

// Non-test code must not be able to panic: no unwrap/expect/panic, no
// unchecked indexing; here once for the whole library. (Not in Cargo.toml
// `[lints]`: that applies to the integration tests and benchmarks too, whose
// helper functions clippy does not count as test code.) A module not yet
// clean says so with an `#[allow]` where it is declared.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod api;
pub mod calendar;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contracts;
pub mod export;
pub mod http;
pub mod ingest;
pub mod internal_events;
pub mod jsonpath;
pub mod kafka;
pub mod ledger;
pub mod lineage;
pub mod loadgen;
pub mod meter;
pub mod metrics;
pub mod money;
pub mod rating;
pub mod reason;
pub mod reconcile;
pub mod refdata;
pub mod registry;
pub mod replay;
pub mod runtime;
pub mod stages;
pub mod store;
pub mod topology;
