//! Producing to Kafka (or the embedded event log) through the host.

use crate::bindings::payfn::host::kafka::produce as host_produce;
pub use crate::bindings::payfn::host::kafka::{Delivery, Error, Message};

/// Produces `messages`; one result per message, in order.
pub fn produce(messages: &[Message]) -> Vec<Result<Delivery, Error>> {
    host_produce(messages)
}
