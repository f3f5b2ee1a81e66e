//! The payment domain shared by the step components.
//!
//! Invariants, asserted where the state changes (and backed by CHECK
//! constraints in the schema):
//! - `0 <= refunded_amount <= captured_amount <= amount`;
//! - status moves only AUTHORIZED -> CAPTURED -> PARTIALLY_REFUNDED ->
//!   REFUNDED, or AUTHORIZED -> VOIDED; DECLINED is final from birth;
//! - every change writes a balanced ledger posting and an outbox event in the
//!   same transaction as the payment row.

pub mod clock;
pub mod events;
pub mod input;
pub mod ledger;
pub mod model;
pub mod money;
pub mod settlement;
pub mod steps;
pub mod store;

pub use model::{Payment, Refund, Status};
