//! What an incoming usage record must be, shared by everything that accepts
//! one: the validate stage (records of `usage.events`) and the HTTP API
//! (events posted to `/api/v1/events`, refused synchronously with the same
//! reason codes before they reach Kafka).
//!
//! * [`decode`]: from a Kafka record (structured JSON, binary mode, Avro in
//!   the Confluent wire format) to a [`crate::contracts::CloudEvent`];
//! * [`rules`]: from a `CloudEvent` to a [`crate::contracts::ValidatedEvent`]
//!   with one exact measure per meter, or a reject;
//! * [`correction`]: retractions and amendments (their `data` names the
//!   event they correct);
//! * [`members`]: JSON that names a member of an object twice (refused);
//! * [`reason`]: the reject reasons, one stable code each.

pub mod correction;
pub mod decode;
pub mod members;
pub mod reason;
pub mod rules;
