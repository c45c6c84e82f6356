//! The enrich stage: ties each validated event to the contract in force when
//! it happened (customer, subscription, plan version, legal entity, currency,
//! GL accounts, billing period). Resolution rules live in [`resolve`].

pub mod resolve;
