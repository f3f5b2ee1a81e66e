//! The asynchronous half on a real Kafka-protocol broker (tansu) through
//! rdkafka, on MariaDB and on PostgreSQL shards with Redis: end to end, a
//! broker outage, two relays on one shard, SIGKILL, poison events, replays;
//! and two hosts splitting the trigger's partitions as one consumer group.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{
    assert_money_invariants, handled_records, outbox_rows, owned_partitions, settled, take_payments,
    unpublished, wait_for, Backend, Host, Kafka, SHARDS,
};

const SETTLE: Duration = Duration::from_secs(90);
/// Group (re)formation: joins, tansu's 3 s follower pauses, and the 6 s
/// session timeout of `Kafka::runtime_config_with` before a dead member's
/// partitions move.
const REBALANCE: Duration = Duration::from_secs(60);

/// Every event of the payments topic once: (records, distinct event ids).
async fn published_once(kafka: &Kafka, expected: usize) -> (usize, usize) {
    let records = kafka.read_all("payments", expected).await;
    let ids: HashSet<Vec<u8>> = records
        .iter()
        .map(|(_, _, headers)| {
            headers.iter().find(|(k, _)| k == "event-id").map(|(_, v)| v.clone()).unwrap_or_default()
        })
        .collect();
    (records.len(), ids.len())
}

async fn payments_flow_through_kafka_exactly_once(backend: Backend) {
    let host = backend.start().await;
    let kafka = host.kafka();
    take_payments(&host, 4).await;
    wait_for(SETTLE, "settlement through Kafka", || settled(&host, SHARDS)).await;
    wait_for(SETTLE, "settlement.updated to be published", || async {
        unpublished(&host, SHARDS).await == 0
    })
    .await;

    let rows = outbox_rows(&host, SHARDS).await as usize;
    let (records, distinct) = published_once(kafka, rows).await;
    assert_eq!((records, distinct), (rows, rows), "each outbox row published exactly once");
    // Per payment, events arrive in commit order.
    let mut by_payment: std::collections::HashMap<Vec<u8>, Vec<String>> = Default::default();
    for (key, value, _) in kafka.read_all("payments", rows).await {
        let event: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let kind = event["type"].as_str().unwrap().to_string();
        if kind.starts_with("payment.") {
            by_payment.entry(key).or_default().push(kind);
        }
    }
    let rank = |kind: &str| match kind {
        "payment.authorized" | "payment.declined" => 0,
        "payment.captured" | "payment.voided" => 1,
        _ => 2,
    };
    for (payment, kinds) in &by_payment {
        let ranks: Vec<_> = kinds.iter().map(|k| rank(k)).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{payment:?}: out of order {kinds:?}");
    }
    // Headers of API.md on every record.
    let all = kafka.read_all("payments", rows).await;
    for (key, value, headers) in &all {
        let names: HashSet<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        for name in ["event-id", "event-type", "merchant-id", "traceparent"] {
            assert!(names.contains(name), "missing header {name}");
        }
        let event: serde_json::Value = serde_json::from_slice(value).unwrap();
        if event["type"].as_str().unwrap().starts_with("payment.") {
            assert_eq!(key.as_slice(), event["paymentId"].as_str().unwrap().as_bytes(), "key = payment id");
        }
    }
    assert_money_invariants(&host, SHARDS).await;
}

async fn a_broker_outage_delays_events_but_loses_none(backend: Backend) {
    let host = backend.start().await;
    let kafka = host.kafka();
    take_payments(&host, 1).await;
    wait_for(SETTLE, "first settlement", || settled(&host, SHARDS)).await;

    kafka.set_outage(true);
    // Payments keep succeeding while the broker is away.
    take_payments(&host, 3).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(unpublished(&host, SHARDS).await > 0, "nothing can be published during the outage");
    // Attempts per row stay bounded: exponential backoff (1 s, 2 s, 4 s...).
    for shard in SHARDS {
        let mut db = host.shard(shard).await;
        let most = db.i64("SELECT COALESCE(MAX(retry_count), 0) FROM outbox").await;
        assert!(most <= 4, "{shard}: {most} attempts on one row in 6 s");
        let dead = db.i64("SELECT COUNT(*) FROM outbox WHERE dead_lettered = 1").await;
        assert_eq!(dead, 0);
    }

    let metrics = host.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("payfn_outbox_pending{shard=\"shard-1\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(metrics.contains("payfn_outbox_dead_lettered{shard=\"shard-1\"} 0"), "{metrics}");

    kafka.set_outage(false);
    wait_for(SETTLE, "the backlog to drain after the outage", || settled(&host, SHARDS)).await;
    wait_for(SETTLE, "every row published", || async { unpublished(&host, SHARDS).await == 0 }).await;
    let rows = outbox_rows(&host, SHARDS).await as usize;
    // Across an outage delivery is at-least-once, as DESIGN.md rule 7 has
    // it: a batch the broker stored but whose acknowledgement the cut lost
    // is sent again, by a new producer whose idempotence does not cover
    // the old one's writes (docs/ARCHITECTURE.md, "Found with tansu 0.6").
    // So every event is on the topic, perhaps twice; its effects count
    // once (processed events), which the money invariants check.
    let (records, distinct) = published_once(kafka, rows).await;
    assert_eq!(distinct, rows, "every outbox row published");
    assert!(records >= rows, "{records} records for {rows} rows");
    assert_money_invariants(&host, SHARDS).await;
}

async fn two_hosts_relaying_one_shard_never_publish_twice(backend: Backend) {
    let first = backend.start().await;
    let kafka = first.kafka();
    let second = first.another();
    futures::future::join(take_payments(&first, 3), take_payments(&second, 3)).await;
    wait_for(SETTLE, "settlement with two hosts", || settled(&first, SHARDS)).await;
    wait_for(SETTLE, "every row published", || async { unpublished(&first, SHARDS).await == 0 }).await;
    let rows = outbox_rows(&first, SHARDS).await as usize;
    assert_eq!(published_once(kafka, rows).await, (rows, rows));
    assert_money_invariants(&first, SHARDS).await;
}

async fn a_killed_host_loses_nothing_and_counts_nothing_twice_on_kafka(backend: Backend) {
    let host = backend.start().await;
    take_payments(&host, 2).await;
    let host = host.restart();
    take_payments(&host, 2).await;
    let host = host.restart();
    wait_for(SETTLE, "settlement after two SIGKILLs", || settled(&host, SHARDS)).await;
    assert_money_invariants(&host, SHARDS).await;
}

async fn a_poison_event_is_dead_lettered_on_kafka_and_the_rest_flows(backend: Backend) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let host = backend.start().await;
    let kafka = host.kafka();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", kafka.port))
        .create()
        .unwrap();
    // No event-id, no merchant-id: can never be handled.
    producer.send(FutureRecord::<(), _>::to("payments").payload("{}"), Duration::from_secs(5)).await.unwrap();
    // Well addressed, but the settlement component fails on it every time:
    // retried with backoff, then dead-lettered with the component's error.
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "event-id", value: Some("evt_bad") })
        .insert(rdkafka::message::Header { key: "merchant-id", value: Some("1") });
    let bad = FutureRecord::to("payments").key("pay_bad").payload("not json").headers(headers);
    producer.send(bad, Duration::from_secs(5)).await.unwrap();
    take_payments(&host, 2).await;
    wait_for(SETTLE, "settlement past the poison event", || settled(&host, SHARDS)).await;
    let dead = kafka.read_all("payments.dlq", 2).await;
    assert_eq!(dead.len(), 2);
    let errors: Vec<String> = dead
        .iter()
        .flat_map(|(_, _, headers)| headers.iter().filter(|(k, _)| k == "dlq-error"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(errors.iter().any(|e| e.contains("no event-id")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("invalid_json")), "{errors:?}");
    let metrics = host.metrics().await;
    let refused = support::metric(
        &metrics,
        "payfn_invocation_errors_total",
        &[("component", "settlement"), ("kind", "refused")],
    );
    assert_eq!(refused, 5.0, "{metrics}");
}

async fn redelivered_events_change_nothing_on_kafka(backend: Backend) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let host = backend.start().await;
    let env = host.env.clone().expect("a server backend");
    let kafka = env.kafka.as_ref().expect("kafka");
    take_payments(&host, 2).await;
    wait_for(SETTLE, "settlement", || settled(&host, SHARDS)).await;
    let before = support::actual_settlements(&host, SHARDS).await;

    // With the host down, rewind the settlement group to offset 0 everywhere.
    let mut host = host;
    host.kill();
    let rewind: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", kafka.port))
        .set("group.id", "settlement")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..2 {
        list.add_partition_offset("payments", partition, rdkafka::Offset::Offset(0)).unwrap();
    }
    rewind.assign(&list).unwrap();
    rewind.commit(&list, CommitMode::Sync).unwrap();
    drop(rewind);

    // At least every capture and refund was consumed before the rewind.
    let consumed: i64 = before.iter().map(|(_, _, _, _, captures, refunds)| captures + refunds).sum();
    let host = host.restart();
    // Those events come again and are recognised as already processed.
    wait_for(SETTLE, "the replay to be consumed", || async {
        let metrics = host.metrics().await;
        let duplicates = metrics
            .lines()
            .find_map(|l| l.strip_prefix("payfn_events_duplicate_total{component=\"settlement\"} "))
            .and_then(|n| n.trim().parse::<i64>().ok())
            .unwrap_or(0);
        duplicates >= consumed
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(support::actual_settlements(&host, SHARDS).await, before, "replays must change nothing");
}

/// Like `wait_for` with the `REBALANCE` limit; on timeout the panic shows
/// what each host logged about its Kafka partitions.
async fn wait_for_group<F, Fut>(hosts: &[&Host], what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let polled = tokio::time::timeout(REBALANCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if polled.is_err() {
        let logs: Vec<String> = hosts
            .iter()
            .map(|h| h.log().lines().filter(|l| l.contains("kafka")).collect::<Vec<_>>().join("\n"))
            .collect();
        panic!("timed out waiting for {what}; Kafka log lines per host:\n{}", logs.join("\n---\n"));
    }
}

/// The partitions of `payments` that `host`'s settlement consumer owns.
async fn owned(host: &Host) -> std::collections::BTreeSet<i32> {
    owned_partitions(host, "settlement", "payments").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_split_the_partitions_and_the_survivor_of_a_sigkill_takes_them_over() {
    const PARTITIONS: i32 = 4;
    let all: std::collections::BTreeSet<i32> = (0..PARTITIONS).collect();
    let kafka = Kafka::start().await;
    let first =
        Host::start_with(&support::manifest(""), &kafka.runtime_config_with(PARTITIONS as u32, "group"));
    wait_for_group(&[&first], "the first host to own every partition", || async {
        owned(&first).await == all
    })
    .await;

    // The second host joins the group: the partitions split between the two.
    let mut second = first.another();
    wait_for_group(&[&first, &second], "the partitions to split between the two hosts", || async {
        let (a, b) = (owned(&first).await, owned(&second).await);
        !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == all.len()
    })
    .await;
    let split = (owned(&first).await, owned(&second).await);

    futures::future::join(take_payments(&first, 3), take_payments(&second, 3)).await;
    wait_for(SETTLE, "settlement with the partitions split", || settled(&first, SHARDS)).await;
    assert_eq!((owned(&first).await, owned(&second).await), split, "no rebalance in steady state");
    // Both hosts consumed, each only its own partitions: no partition was
    // handled by both.
    let handled_first = handled_records(&first, "settlement", "payments").await;
    let handled_second = handled_records(&second, "settlement", "payments").await;
    assert!(!handled_first.is_empty() && !handled_second.is_empty(), "{handled_first:?} {handled_second:?}");
    assert!(handled_first.keys().all(|p| split.0.contains(p)), "{handled_first:?} outside {:?}", split.0);
    assert!(handled_second.keys().all(|p| split.1.contains(p)), "{handled_second:?} outside {:?}", split.1);
    let duplicates = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("payfn_events_duplicate_total{component=\"settlement\"} "))
            .and_then(|n| n.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        duplicates(first.metrics().await) + duplicates(second.metrics().await),
        0,
        "no record read twice"
    );
    let log = second.log();
    assert!(log.contains("kafka partitions assigned"), "{log}");

    // SIGKILL the second host (no LeaveGroup): once its session times out,
    // the first takes over its partitions and settles every new event.
    // (It is the follower: the first host joined first and leads the group.
    // With tansu 0.6 a dead *leader*'s partitions are never handed over;
    // see docs/ARCHITECTURE.md.)
    second.kill();
    take_payments(&first, 2).await;
    wait_for_group(&[&first, &second], "the survivor to own every partition", || async {
        owned(&first).await == all
    })
    .await;
    wait_for(SETTLE, "settlement of every event by the survivor", || settled(&first, SHARDS)).await;
    let handled = handled_records(&first, "settlement", "payments").await;
    assert!(split.1.iter().any(|p| handled.contains_key(p)), "{handled:?}: took over none of {:?}", split.1);
    assert_money_invariants(&first, SHARDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_all_partitions_assignment_every_host_reads_everything_and_effects_stay_exact() {
    let kafka = Kafka::start().await;
    let first = Host::start_with(&support::manifest(""), &kafka.runtime_config_with(2, "all-partitions"));
    let second = first.another();
    let all: std::collections::BTreeSet<i32> = (0..2).collect();
    wait_for_group(&[&first, &second], "both hosts to read every partition", || async {
        owned(&first).await == all && owned(&second).await == all
    })
    .await;
    futures::future::join(take_payments(&first, 2), take_payments(&second, 2)).await;
    wait_for(SETTLE, "settlement with every host reading everything", || settled(&first, SHARDS)).await;
    assert_money_invariants(&first, SHARDS).await;
}

/// What group membership promises when the host that dies is the group's
/// leader (the first to join). Fails against tansu 0.6, whose coordinator
/// keeps the dead leader and never completes the rebalance; run it against a
/// broker that should pass (`--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6 never hands over a dead group leader's partitions (docs/ARCHITECTURE.md)"]
async fn the_survivor_of_a_sigkilled_group_leader_takes_its_partitions_over() {
    let all: std::collections::BTreeSet<i32> = (0..4).collect();
    let kafka = Kafka::start().await;
    let mut first = Host::start_with(&support::manifest(""), &kafka.runtime_config_with(4, "group"));
    wait_for_group(&[&first], "the first host (the leader) to own every partition", || async {
        owned(&first).await == all
    })
    .await;
    let second = first.another();
    wait_for_group(&[&first, &second], "the partitions to split between the two hosts", || async {
        let (a, b) = (owned(&first).await, owned(&second).await);
        !a.is_empty() && !b.is_empty() && a.union(&b).count() == all.len()
    })
    .await;
    first.kill();
    take_payments(&second, 2).await;
    wait_for_group(&[&second], "the survivor to own every partition", || async {
        owned(&second).await == all
    })
    .await;
    wait_for(SETTLE, "settlement by the survivor", || settled(&second, SHARDS)).await;
}

on_server_backends!(
    payments_flow_through_kafka_exactly_once,
    a_broker_outage_delays_events_but_loses_none,
    two_hosts_relaying_one_shard_never_publish_twice,
    a_killed_host_loses_nothing_and_counts_nothing_twice_on_kafka,
    a_poison_event_is_dead_lettered_on_kafka_and_the_rest_flows,
    redelivered_events_change_nothing_on_kafka
);
