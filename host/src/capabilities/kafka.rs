//! `kafka`: produce to the host's broker ([`crate::broker`]), only to the
//! topics the component's `kafka_topics` grants.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{Capability, ComponentConfig, Field, HostResources, Lent};
use crate::bindings::kafka::{Delivery, Error, Host, Message};
use crate::broker::Broker;

/// The capability: the host's broker, if it has one.
pub struct Kafka {
    broker: Option<Broker>,
}

impl Capability for Kafka {
    const NAME: &'static str = "kafka";
    const INTERFACES: &'static [&'static str] = &["payfn:host/kafka"];
    const MANIFEST_KEYS: &'static [&'static str] = &[TOPICS_KEY];
    /// The topics the component may produce to.
    type Component = Arc<[String]>;
    type State = KafkaState;

    async fn init(host: &HostResources) -> anyhow::Result<Self> {
        Ok(Self { broker: host.broker.clone() })
    }

    fn link<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut KafkaState,
    ) -> wasmtime::Result<()> {
        crate::bindings::kafka::add_to_linker::<_, Field<KafkaState>>(linker, get)
    }

    fn configure(&self, component: &ComponentConfig<'_>) -> anyhow::Result<Arc<[String]>> {
        Ok(granted_topics(component)?.into())
    }

    fn instance(&self, topics: &Arc<[String]>, _lent: &mut Lent) -> KafkaState {
        KafkaState { broker: self.broker.clone(), topics: topics.clone() }
    }
}

/// `[component.NAME] kafka_topics`: the topics a component may produce to.
const TOPICS_KEY: &str = "kafka_topics";

/// The topics `component` may produce to (none if it names none): the
/// host makes sure they exist at start.
pub fn granted_topics(component: &ComponentConfig<'_>) -> anyhow::Result<Vec<String>> {
    Ok(component.key::<Vec<String>>(TOPICS_KEY)?.unwrap_or_default())
}

/// Per-invocation state: the broker and the topics this component may write.
pub struct KafkaState {
    broker: Option<Broker>,
    topics: Arc<[String]>,
}

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
