//! One broker connection with a publishing channel (confirms on) and
//! consuming channels.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::convert;
use super::tls::BrokerTls;
use super::AmqpError;
use crate::core::message::{Inbound, Message};
use crate::core::topology::{self, QueueSpec, Topology};

/// A queue's depth and consumer count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueInfo {
    /// Messages ready.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// The first `x-death` record of a dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Death {
    /// Why: `rejected`, `expired`, `maxlen`, `delivery_limit`.
    pub reason: String,
    /// The queue it died in.
    pub queue: String,
    /// How many times it died there.
    pub count: i64,
    /// When it died (ms since the epoch), when the broker said.
    pub time_ms: Option<i64>,
}

/// A message taken with `basic.get` and not yet settled.
#[derive(Debug, Clone)]
pub struct Got {
    /// The message and its delivery tag on the browser's channel.
    pub inbound: Inbound,
    /// The most recent `x-death` record, if it was dead-lettered.
    pub death: Option<Death>,
    /// Messages left in the queue after this one.
    pub remaining: u32,
}

/// A channel for pulling messages from one queue one at a time
/// (`basic.get`); whatever is not acked is requeued when it closes.
pub struct Browser {
    channel: Channel,
    queue: String,
}

fn death_of(props: &lapin::BasicProperties) -> Option<Death> {
    let headers = props.headers().as_ref()?;
    let deaths = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == "x-death")?
        .1;
    let AMQPValue::FieldArray(arr) = deaths else {
        return None;
    };
    let AMQPValue::FieldTable(first) = arr.as_slice().first()? else {
        return None;
    };
    let text = |name: &str| {
        first
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let field = |name: &str| {
        first
            .inner()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.clone())
    };
    let count = match field("count") {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        _ => 0,
    };
    let time_ms = match field("time") {
        Some(AMQPValue::Timestamp(t)) => i64::try_from(t).ok().map(|s| s * 1000),
        _ => None,
    };
    Some(Death {
        reason: text("reason"),
        queue: text("queue"),
        count,
        time_ms,
    })
}

/// A connection to the broker.
pub struct Link {
    conn: Connection,
    publisher: Channel,
    /// Publishing channels (the first is `publisher`), chosen by routing key,
    /// each with the task that pairs its confirms with returned messages
    /// (see [`Link::publish`]).
    publishers: Vec<Publisher>,
    /// Channel for declarations: a refused declaration closes it (and only
    /// it), so it is reopened on the next one.
    declarer: tokio::sync::Mutex<Option<Channel>>,
    /// Long-lived channels for passive declares, reused across polls. A
    /// passive declare of a missing queue makes the broker close its channel
    /// (404); such a channel is dropped and a new one opened.
    probes: tokio::sync::Mutex<Vec<Channel>>,
}

/// Most channels [`Link::probe_queues`] uses at once.
pub const MAX_PROBE_CHANNELS: usize = 16;

/// A consumer on its own channel; settle its deliveries through it.
pub struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
}

/// The words RabbitMQ (3.10, `rabbit_amqqueue`) adds to `NOT_FOUND` for a
/// durable queue that exists but whose process cannot be reached: its home
/// node is down, it is being stopped (its node is shutting down), or it
/// crashed and was not restarted.
const QUEUE_ABSENT: [&str; 3] = [
    "is down or inaccessible",
    "process is stopped by supervisor",
    "has crashed and failed to restart",
];

/// What a refusal of `op` on `name` means. RabbitMQ answers `NOT_FOUND`
/// both for a queue that does not exist (`no queue '…'`) and for a durable
/// queue it cannot reach now ([`QUEUE_ABSENT`]); only the first is final.
fn classify(op: &'static str, name: &str, e: lapin::Error) -> AmqpError {
    let text = e.to_string();
    if text.contains("NOT_FOUND") && QUEUE_ABSENT.iter().any(|w| text.contains(w)) {
        AmqpError::QueueUnavailable(name.to_owned())
    } else if text.contains("NOT_FOUND") {
        AmqpError::NoSuchQueue(name.to_owned())
    } else if text.contains("PRECONDITION_FAILED") {
        AmqpError::Conflict {
            name: name.to_owned(),
            message: text,
        }
    } else {
        AmqpError::broker(op, e)
    }
}

/// How long one node gets to finish the AMQP handshake and open the link's
/// channels. A node that accepts TCP but does not answer (still booting,
/// shutting down, or paused) is given up after this, and the next is tried.
pub const NODE_CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Connects through `connect` to the first node of `url` (one URL, or a
/// comma-separated list of a cluster's nodes) that answers within
/// [`NODE_CONNECT_LIMIT`]; when none does, the error names each node
/// (without credentials) and why.
async fn first_node<'u, F, Fut>(url: &'u str, connect: F) -> Result<Link, AmqpError>
where
    F: Fn(&'u str) -> Fut,
    Fut: std::future::Future<Output = Result<Link, AmqpError>>,
{
    let nodes = crate::core::config::broker_nodes(url);
    let mut failures = Vec::new();
    for node in &nodes {
        let answered = tokio::time::timeout(NODE_CONNECT_LIMIT, connect(node))
            .await
            .unwrap_or_else(|_| {
                Err(AmqpError::Connect(format!(
                    "{}: no answer within {} s",
                    redact(node),
                    NODE_CONNECT_LIMIT.as_secs()
                )))
            });
        match answered {
            Ok(link) => return Ok(link),
            Err(e) if nodes.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!(node = %redact(node), error = %e, "broker node not reachable; trying the next");
                failures.push(format!("{}: {e}", redact(node)));
            }
        }
    }
    Err(AmqpError::Connect(if failures.is_empty() {
        "no broker URL given".into()
    } else {
        format!("no broker node answered: {}", failures.join("; "))
    }))
}

/// `url` without its credentials, for logs (each node of a list).
pub fn redact(url: &str) -> String {
    crate::core::config::broker_nodes(url)
        .iter()
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => (*u).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Link {
    /// Connects to `url`, naming the connection `name` in the broker's UI.
    /// An `amqps://` URL trusts the CA file named by `TRUC_AMQP_CA_FILE`
    /// (see [`BrokerTls::from_env`]).
    pub async fn connect(url: &str, name: &str) -> Result<Self, AmqpError> {
        Self::connect_with(url, name, 1).await
    }

    /// Connects with `channels` publishing channels (confirms on each): the
    /// broker serves each channel in its own process, so several spread the
    /// confirm work of a busy publisher. A message goes out on the channel of
    /// its routing key, so order per destination queue is kept.
    pub async fn connect_with(url: &str, name: &str, channels: usize) -> Result<Self, AmqpError> {
        Self::connect_tls(url, name, channels, &BrokerTls::from_env()).await
    }

    /// [`Link::connect_with`] with explicit TLS trust settings: an `amqps://`
    /// URL is verified against `tls`, never downgraded to plaintext.
    ///
    /// `url` may list the nodes of a cluster, separated by commas: they are
    /// tried in order and the first that answers is used (a reconnect after
    /// a node died tries them again, so it lands on a live one).
    pub async fn connect_tls(
        url: &str,
        name: &str,
        channels: usize,
        tls: &BrokerTls,
    ) -> Result<Self, AmqpError> {
        first_node(url, |node| Self::connect_tls_one(node, name, channels, tls)).await
    }

    async fn connect_tls_one(
        url: &str,
        name: &str,
        channels: usize,
        tls: &BrokerTls,
    ) -> Result<Self, AmqpError> {
        let tls_config = tls.for_url(url)?;
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let runtime =
            lapin::runtime::default_runtime().map_err(|e| AmqpError::Connect(e.to_string()))?;
        let conn = Connection::connect_with_config(url, props, tls_config, runtime)
            .await
            .map_err(|e| super::tls::connect_error(url, &e))?;
        Self::over(conn, channels).await
    }

    /// Like [`Link::connect_tls`], but everything the broker sends passes the
    /// [frame guard](super::guard) first: a message lapin could not parse
    /// arrives with its properties replaced instead of closing the link. For
    /// links that read what agencies published. With `amqps://` the guard
    /// makes the TLS connection (verified against `tls`) and lapin speaks to
    /// the guard over loopback.
    /// Like `connect_tls`, `url` may list several nodes.
    pub async fn connect_guarded(
        url: &str,
        name: &str,
        channels: usize,
        tls: &BrokerTls,
    ) -> Result<Self, AmqpError> {
        first_node(url, |node| {
            Self::connect_guarded_one(node, name, channels, tls)
        })
        .await
    }

    async fn connect_guarded_one(
        url: &str,
        name: &str,
        channels: usize,
        tls: &BrokerTls,
    ) -> Result<Self, AmqpError> {
        let mut uri: lapin::uri::AMQPUri = url
            .parse()
            .map_err(|e: String| AmqpError::Connect(format!("broker URL: {e}")))?;
        let upstream = super::guard::Upstream::for_uri(&uri, tls).await?;
        let local = super::guard::relay(upstream)
            .await
            .map_err(|e| AmqpError::Connect(format!("frame guard: {e}")))?;
        uri.scheme = lapin::uri::AMQPScheme::AMQP;
        uri.authority.host = local.ip().to_string();
        uri.authority.port = local.port();
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let conn = Connection::connect_uri(uri, props)
            .await
            .map_err(|e| super::tls::connect_error(url, &e))?;
        Self::over(conn, channels).await
    }

    async fn over(conn: Connection, channels: usize) -> Result<Self, AmqpError> {
        let mut publishers = Vec::with_capacity(channels.max(1));
        for _ in 0..channels.max(1) {
            let publisher = conn
                .create_channel()
                .await
                .map_err(|e| AmqpError::broker("channel.open", e))?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| AmqpError::broker("confirm.select", e))?;
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(pair_confirms(rx));
            publishers.push(Publisher {
                channel: publisher,
                order: tokio::sync::Mutex::new(tx),
            });
        }
        let publisher = publishers[0].channel.clone();
        Ok(Self {
            conn,
            publisher,
            publishers,
            declarer: tokio::sync::Mutex::new(None),
            probes: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// True while the connection is usable.
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
            && self
                .publishers
                .iter()
                .all(|p| p.channel.status().connected())
    }

    /// Declares every exchange and fixed queue of `topo`.
    pub async fn declare_topology(&self, topo: &Topology) -> Result<(), AmqpError> {
        for ex in &topo.exchanges {
            let kind = match ex.kind {
                topology::ExchangeKind::Topic => ExchangeKind::Topic,
                topology::ExchangeKind::Direct => ExchangeKind::Direct,
                topology::ExchangeKind::Fanout => ExchangeKind::Fanout,
            };
            self.publisher
                .exchange_declare(
                    ShortString::from(ex.name.as_str()),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    convert::arguments(&ex.arguments),
                )
                .await
                .map_err(|e| classify("exchange.declare", &ex.name, e))?;
        }
        for q in &topo.queues {
            self.declare_queue(q).await?;
        }
        Ok(())
    }

    /// Declares one durable queue and its bindings.
    pub async fn declare_queue(&self, q: &QueueSpec) -> Result<(), AmqpError> {
        let mut slot = self.declarer.lock().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .conn
                    .create_channel()
                    .await
                    .map_err(|e| AmqpError::broker("channel.open", e))?;
                *slot = Some(c.clone());
                c
            }
        };
        channel
            .queue_declare(
                ShortString::from(q.name.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                convert::arguments(&q.arguments),
            )
            .await
            .map_err(|e| classify("queue.declare", &q.name, e))?;
        for b in &q.bind {
            channel
                .queue_bind(
                    ShortString::from(q.name.as_str()),
                    ShortString::from(b.exchange.as_str()),
                    ShortString::from(b.key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| classify("queue.bind", &q.name, e))?;
        }
        Ok(())
    }

    /// Publishes `msg` to `msg.exchange` with `msg.routing_key`, persistent
    /// and mandatory, and waits for the broker's confirm.
    ///
    /// A returned (unroutable) message is matched to its publish by content
    /// ([`pair_confirms`]), never by which confirm lapin attached it to.
    pub async fn publish(&self, msg: &Message) -> Result<(), AmqpError> {
        // One channel per routing key: messages to the same queue keep the
        // order they were published in (a source's notices, an inbox's deliveries).
        let i = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&msg.exchange, &msg.routing_key).hash(&mut h);
            (h.finish() as usize) % self.publishers.len()
        };
        let publisher = &self.publishers[i];
        let (reply, answer) = oneshot::channel();
        {
            // Confirms reach the pairing task in the order they were published.
            let order = publisher.order.lock().await;
            let confirm = publisher
                .channel
                .basic_publish(
                    ShortString::from(msg.exchange.as_str()),
                    ShortString::from(msg.routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &msg.body,
                    convert::properties(msg),
                )
                .await
                .map_err(|e| AmqpError::broker("basic.publish", e))?;
            order
                .send(Pending {
                    confirm,
                    print: fingerprint(
                        &msg.exchange,
                        &msg.routing_key,
                        msg.message_id.as_deref(),
                        &msg.body,
                    ),
                    reply,
                })
                .map_err(|_| AmqpError::Broker {
                    op: "publisher confirm",
                    message: "the link is closing".into(),
                })?;
        }
        let outcome = answer.await.map_err(|_| AmqpError::Broker {
            op: "publisher confirm",
            message: "the link closed before the confirm".into(),
        })??;
        match outcome {
            Outcome::Ack => Ok(()),
            Outcome::Returned => Err(AmqpError::Unroutable {
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            }),
            Outcome::Nack => Err(AmqpError::Nack(msg.exchange.clone())),
        }
    }

    /// Starts consuming `queue` on a new channel with `prefetch` unacked deliveries.
    pub async fn subscribe(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Subscription, AmqpError> {
        let channel = self
            .conn
            .create_channel()
            .await
            .map_err(|e| AmqpError::broker("channel.open", e))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| AmqpError::broker("basic.qos", e))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify("basic.consume", queue, e))?;
        Ok(Subscription { channel, consumer })
    }

    /// Depth and consumers of `queue` (passive declare on a pooled channel).
    pub async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError> {
        self.probe_queues(&[queue.to_owned()], 1)
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(AmqpError::Broker {
                    op: "queue.declare passive",
                    message: "no answer".into(),
                })
            })
    }

    async fn probe_channel(&self) -> Result<Channel, AmqpError> {
        while let Some(ch) = self.probes.lock().await.pop() {
            if ch.status().connected() {
                return Ok(ch);
            }
        }
        // Measured with lapin 4.12: after the broker closed a channel with a
        // 404, every later channel.open on the connection fails with that same
        // error. Callers that may probe missing queues use a connection of
        // their own and replace it when channel.open fails.
        self.conn
            .create_channel()
            .await
            .map_err(|e| AmqpError::broker("channel.open", e))
    }

    /// Depth and consumers of every queue in `names`, in order, by passive
    /// declares on at most `concurrency` channels at once (each sequential).
    /// The channels are kept for the next call; one closed by a 404 is
    /// replaced. Cost to the broker: one `queue.declare` round trip per queue,
    /// plus one `channel.open` per missing queue.
    pub async fn probe_queues(
        &self,
        names: &[String],
        concurrency: usize,
    ) -> Vec<Result<QueueInfo, AmqpError>> {
        if names.is_empty() {
            return Vec::new();
        }
        let workers = concurrency.clamp(1, MAX_PROBE_CHANNELS).min(names.len());
        let per = names.len().div_ceil(workers);
        let runs = names.chunks(per).map(|chunk| async move {
            let mut out = Vec::with_capacity(chunk.len());
            let mut channel: Option<Channel> = None;
            for name in chunk {
                let ch = match channel.take() {
                    Some(ch) if ch.status().connected() => ch,
                    _ => match self.probe_channel().await {
                        Ok(ch) => ch,
                        Err(e) => {
                            out.push(Err(e));
                            continue;
                        }
                    },
                };
                let res = ch
                    .queue_declare(
                        ShortString::from(name.as_str()),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await;
                match res {
                    Ok(q) => {
                        out.push(Ok(QueueInfo {
                            messages: q.message_count(),
                            consumers: q.consumer_count(),
                        }));
                        channel = Some(ch);
                    }
                    // Any error closes the channel (a 404 does, broker side): drop it.
                    Err(e) => out.push(Err(classify("queue.declare passive", name, e))),
                }
            }
            if let Some(ch) = channel {
                self.probes.lock().await.push(ch);
            }
            out
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Opens a [`Browser`] on `queue` (its own channel).
    pub async fn browse(&self, queue: &str) -> Result<Browser, AmqpError> {
        let channel = self
            .conn
            .create_channel()
            .await
            .map_err(|e| AmqpError::broker("channel.open", e))?;
        Ok(Browser {
            channel,
            queue: queue.to_owned(),
        })
    }

    /// Removes every ready message of `queue`; returns how many.
    pub async fn purge(&self, queue: &str) -> Result<u32, AmqpError> {
        self.publisher
            .queue_purge(ShortString::from(queue), QueuePurgeOptions::default())
            .await
            .map_err(|e| classify("queue.purge", queue, e))
    }

    /// Deletes `queue`; returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, AmqpError> {
        self.publisher
            .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
            .await
            .map_err(|e| classify("queue.delete", queue, e))
    }

    /// Deletes `exchange` (and every binding from it), used or not. The
    /// broker treats an exchange that does not exist as deleted. For tearing
    /// down a prefix (tests, the benchmark); `truc serve` never deletes one.
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.publisher
            .exchange_delete(
                ShortString::from(exchange),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|e| classify("exchange.delete", exchange, e))
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

impl Subscription {
    /// Asks the broker to stop sending; deliveries already sent still come
    /// out of [`Subscription::next`], which then returns `None`.
    pub async fn cancel(&self) -> Result<(), AmqpError> {
        self.channel
            .basic_cancel(
                self.consumer.tag(),
                lapin::options::BasicCancelOptions::default(),
            )
            .await
            .map_err(|e| AmqpError::broker("basic.cancel", e))
    }

    /// The next delivery; `None` when the consumer was cancelled.
    pub async fn next(&mut self) -> Option<Result<Inbound, AmqpError>> {
        match self.consumer.next().await? {
            Ok(d) => Some(Ok(convert::inbound(d))),
            Err(e) => Some(Err(AmqpError::broker("basic.deliver", e))),
        }
    }

    /// Acknowledges one delivery.
    pub async fn ack(&self, delivery_tag: u64) -> Result<(), AmqpError> {
        self.settler().ack(delivery_tag).await
    }

    /// Rejects one delivery (`requeue=false` dead-letters it).
    pub async fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), AmqpError> {
        self.settler().reject(delivery_tag, requeue).await
    }

    /// A handle that settles deliveries of this subscription from other tasks.
    pub fn settler(&self) -> Settler {
        Settler {
            channel: self.channel.clone(),
        }
    }

    /// Closes the channel: the broker requeues every delivery still unacked.
    pub async fn close(self) {
        if self.channel.status().connected() {
            let _ = self.channel.close(200, ShortString::from("done")).await;
        }
    }
}

impl Browser {
    /// Takes the next message (unacked), or `None` when the queue is empty.
    /// A message taken and then rejected with `requeue=true` comes back
    /// with the `redelivered` flag set.
    pub async fn get(&self) -> Result<Option<Got>, AmqpError> {
        let got = self
            .channel
            .basic_get(
                ShortString::from(self.queue.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| classify("basic.get", &self.queue, e))?;
        Ok(got.map(|g| {
            let death = death_of(&g.delivery.properties);
            Got {
                remaining: g.message_count,
                death,
                inbound: convert::inbound(g.delivery),
            }
        }))
    }

    /// Acknowledges (removes) one message taken by [`Browser::get`].
    pub async fn ack(&self, delivery_tag: u64) -> Result<(), AmqpError> {
        self.settler().ack(delivery_tag).await
    }

    /// Returns one message to the queue (`requeue=true`) or drops it to the
    /// queue's dead-letter exchange (`requeue=false`).
    pub async fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), AmqpError> {
        self.settler().reject(delivery_tag, requeue).await
    }

    fn settler(&self) -> Settler {
        Settler {
            channel: self.channel.clone(),
        }
    }

    /// Closes the channel; the broker requeues every message still unacked.
    pub async fn close(self) {
        if self.channel.status().connected() {
            let _ = self.channel.close(200, ShortString::from("done")).await;
        }
    }
}

/// Settles deliveries of one subscription (cloneable, for worker tasks).
#[derive(Clone)]
pub struct Settler {
    channel: Channel,
}

impl Settler {
    /// Acknowledges one delivery.
    pub async fn ack(&self, delivery_tag: u64) -> Result<(), AmqpError> {
        self.channel
            .basic_ack(delivery_tag, BasicAckOptions::default())
            .await
            .map_err(|e| AmqpError::broker("basic.ack", e))
    }

    /// Rejects one delivery.
    pub async fn reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), AmqpError> {
        self.channel
            .basic_reject(delivery_tag, BasicRejectOptions { requeue })
            .await
            .map_err(|e| AmqpError::broker("basic.reject", e))
    }
}

/// A publishing channel of a [`Link`].
struct Publisher {
    channel: Channel,
    /// Held while a message is published and its confirm handed on, so the
    /// pairing task gets the confirms in publish order.
    order: tokio::sync::Mutex<mpsc::UnboundedSender<Pending>>,
}

/// A publish waiting for its confirm.
struct Pending {
    confirm: lapin::PublisherConfirm,
    /// [`fingerprint`] of what was published.
    print: u64,
    reply: oneshot::Sender<Result<Outcome, AmqpError>>,
}

/// What became of one publish.
enum Outcome {
    Ack,
    Returned,
    Nack,
}

/// Identifies a published message among those in flight on a channel.
fn fingerprint(exchange: &str, routing_key: &str, message_id: Option<&str>, body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (exchange, routing_key, message_id, body).hash(&mut h);
    h.finish()
}

/// Unclaimed returns kept at most (of publishes whose caller went away).
const RETURNS_KEPT: usize = 4096;

/// Answers each publish of one channel with what became of it.
///
/// lapin (4.12) hands a returned message to whichever confirm it completes
/// next, not to the publish it belongs to: the broker sends `basic.return`
/// at routing time and the `basic.ack` later, maybe one `multiple` ack for
/// several publishes, which lapin completes in no set order. Trusting that
/// pairing, a delivery returned while its inbox's node was down looked
/// delivered (measured: 3 of 3,000 lost in the cluster test). So every
/// returned message is matched by content instead: each round waits for
/// the oldest confirm, then takes every confirm resolved by then (a whole
/// `multiple` ack resolves at once), collects the returns they carry, and
/// answers each resolved publish: returned if one of the returns is its
/// message. A message's return comes before its own confirm and is taken
/// off lapin's queue no later than the confirm that completes with it; a
/// return taken by an earlier confirm waits here for its publish.
async fn pair_confirms(mut rx: mpsc::UnboundedReceiver<Pending>) {
    use futures_util::FutureExt;
    type Resolved = Option<Result<Confirmation, lapin::Error>>;
    let mut waiting: std::collections::VecDeque<(Pending, Resolved)> = Default::default();
    let mut returns: std::collections::VecDeque<u64> = Default::default();
    let mut open = true;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(p) => waiting.push_back((p, None)),
                None => return,
            }
        }
        let first = tokio::select! {
            r = &mut waiting[0].0.confirm => r,
            p = rx.recv(), if open => {
                match p {
                    Some(p) => waiting.push_back((p, None)),
                    None => open = false,
                }
                continue;
            }
        };
        waiting[0].1 = Some(first);
        while let Ok(p) = rx.try_recv() {
            waiting.push_back((p, None));
        }
        for (p, r) in waiting.iter_mut().skip(1) {
            if r.is_none() {
                *r = (&mut p.confirm).now_or_never();
            }
        }
        for (_, r) in waiting.iter_mut() {
            if let Some(Ok(c)) = r {
                let bare = match c {
                    Confirmation::Ack(_) => Confirmation::Ack(None),
                    Confirmation::Nack(_) => Confirmation::Nack(None),
                    Confirmation::NotRequested => Confirmation::NotRequested,
                };
                if let Some(m) = std::mem::replace(c, bare).take_message() {
                    let d = &m.delivery;
                    returns.push_back(fingerprint(
                        d.exchange.as_str(),
                        d.routing_key.as_str(),
                        d.properties.message_id().as_ref().map(|s| s.as_str()),
                        &d.data,
                    ));
                }
            }
        }
        let mut still = std::collections::VecDeque::with_capacity(waiting.len());
        for (p, r) in waiting.drain(..) {
            let Some(res) = r else {
                still.push_back((p, None));
                continue;
            };
            let outcome = match res {
                Err(e) => Err(AmqpError::broker("publisher confirm", e)),
                Ok(c) => match returns.iter().position(|f| *f == p.print) {
                    Some(i) => {
                        returns.remove(i);
                        Ok(Outcome::Returned)
                    }
                    None => match c {
                        Confirmation::Ack(_) => Ok(Outcome::Ack),
                        Confirmation::Nack(_) => Ok(Outcome::Nack),
                        Confirmation::NotRequested => Err(AmqpError::Broker {
                            op: "publisher confirm",
                            message: "confirms are not enabled on the channel".into(),
                        }),
                    },
                },
            };
            // The caller may have stopped waiting.
            let _ = p.reply.send(outcome);
        }
        waiting = still;
        while returns.len() > RETURNS_KEPT {
            returns.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPSoftError};

    use super::*;

    fn not_found(text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(AMQPSoftError::NOTFOUND.into(), text.into()))
            .into()
    }

    #[test]
    fn a_queue_on_a_node_that_is_down_is_unavailable_not_missing() {
        // RabbitMQ 3.10's words for each (rabbit_amqqueue, rabbit_misc).
        let q = "queue 'lgsp.inbox.000.00.32.H41' in vhost '/'";
        for text in [
            format!(
                "NOT_FOUND - home node 'rabbit-2@localhost' of durable {q} is down or inaccessible"
            ),
            format!("NOT_FOUND - {q} process is stopped by supervisor"),
            format!("NOT_FOUND - {q} has crashed and failed to restart"),
        ] {
            let down = classify(
                "basic.consume",
                "lgsp.inbox.000.00.32.H41",
                not_found(&text),
            );
            assert!(
                matches!(&down, AmqpError::QueueUnavailable(q) if q == "lgsp.inbox.000.00.32.H41"),
                "{text}: {down:?}"
            );
            assert!(down.is_retryable());
        }
        let missing = classify(
            "basic.consume",
            "lgsp.inbox.000.00.99.H41",
            not_found("NOT_FOUND - no queue 'lgsp.inbox.000.00.99.H41' in vhost '/'"),
        );
        assert!(
            matches!(&missing, AmqpError::NoSuchQueue(q) if q == "lgsp.inbox.000.00.99.H41"),
            "{missing:?}"
        );
        assert!(!missing.is_retryable());
    }
}
