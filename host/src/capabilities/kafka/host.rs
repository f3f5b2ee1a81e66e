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
            return messages.iter().map(|_| Err(refused.clone())).collect();
        }
        match &self.broker {
            Some(broker) => broker.produce(messages).await,
            None => messages.iter().map(|_| Err(Error::Unavailable("no broker configured".into()))).collect(),
        }
    }
}
