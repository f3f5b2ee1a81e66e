//! The WIT host implementation of `payfn:host/kafka`, and nothing else.

use crate::bindings::kafka::{Delivery, Error, Host, Message};

use super::KafkaState;

impl Host for KafkaState {
    async fn produce(&mut self, messages: Vec<Message>) -> Vec<Result<Delivery, Error>> {
        if let Some(m) = messages.iter().find(|m| !self.topics.contains(&m.topic)) {
            let refused = Error::TopicNotGranted(format!(
                "topic `{}` is not in this component's kafka_topics",
                m.topic
            ));
            let results: Vec<_> = messages.iter().map(|_| Err(refused.clone())).collect();
            if let Some(broker) = &self.broker {
                broker.count(messages.iter().map(|m| m.topic.as_str()), &results);
            }
            return results;
        }
        let Some(broker) = &self.broker else {
            return messages.iter().map(|_| Err(Error::Unavailable("no broker configured".into()))).collect();
        };
        if !crate::telemetry::enabled() {
            return broker.produce(messages).await;
        }
        // One `publish` span per traced message, in the trace its
        // `traceparent` header names; the header then names the span, so
        // the consumer's invocation is its child (telemetry.rs).
        let mut messages = messages;
        let spans: Vec<tracing::Span> = messages.iter_mut().filter_map(publish_span).collect();
        let results = broker.produce(messages).await;
        drop(spans);
        results
    }
}

/// The span publishing `message`, if it carries a trace context.
fn publish_span(message: &mut Message) -> Option<tracing::Span> {
    let (_, value) = message.headers.iter_mut().find(|(name, _)| name == "traceparent")?;
    let span = tracing::info_span!("publish", topic = %message.topic);
    crate::telemetry::continue_trace(&span, Some(value));
    *value = crate::telemetry::traceparent(&span)?.into_bytes();
    Some(span)
}
