//! The broker connection: MQTT v5 or v3.1.1 through `rumqttc`, owned by one task.
//!
//! Two tasks share the work. The driver polls rumqttc's event loop and nothing else (it is
//! never cancelled mid-packet) and reconnects with backoff. The connection task owns the
//! [`outbox::Outbox`]: the daemon hands it [`Command`]s on an unbounded channel and never
//! waits for the broker; the task feeds the client a few messages at a time, matches
//! PUBACKs to messages, acknowledges a request to the broker only after its reply was
//! acknowledged (manual acks), resubscribes on every session and checks SUBACKs, and on
//! shutdown flushes what waits before DISCONNECT.

pub mod api;
pub mod discovery;
pub mod outbox;
pub mod remote;
pub mod requests;
pub mod topics;
pub mod wire;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::{MqttConfig, Protocol};
pub use outbox::{AckToken, Class, OutboxStats, Outgoing};

/// A message from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT v5 Response Topic.
    pub response_topic: Option<String>,
    /// MQTT v5 Correlation Data.
    pub correlation: Option<Bytes>,
    /// MQTT v5 Message Expiry Interval left when the broker sent it, in seconds.
    pub expiry: Option<u32>,
    /// The broker sent this message before (DUP flag): it may have been seen already.
    pub redelivered: bool,
    /// What to acknowledge once the message is dealt with (QoS 1); `None` for QoS 0.
    pub ack: Option<AckToken>,
}

/// What the connection reports.
#[derive(Debug, Clone)]
pub enum MqttEvent {
    /// A session started; subscriptions are being made.
    Connected {
        session_present: bool,
    },
    /// The broker answered the subscriptions: the filters it refused (empty: all granted).
    Subscribed {
        refused: Vec<String>,
    },
    /// The connection failed; it is retried with backoff.
    Disconnected(String),
    Message(Incoming),
}

/// What the daemon asks of the connection; sending never blocks.
#[derive(Debug)]
pub enum Command {
    Publish(Outgoing),
    /// Acknowledge a message to the broker now.
    Ack(AckToken),
    /// Send what waits (at most `within`), then DISCONNECT and end.
    Shutdown {
        within: Duration,
    },
}

/// The daemon's handle on the connection task.
#[derive(Debug)]
pub struct Connection {
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Receiver<OutboxStats>,
    task: tokio::task::JoinHandle<()>,
}

/// A handle that publishes through the connection from another task (a pool job).
#[derive(Debug, Clone)]
pub struct Publisher(mpsc::UnboundedSender<Command>);

impl Publisher {
    pub fn publish(&self, m: Outgoing) {
        let _ = self.0.send(Command::Publish(m));
    }
}

impl Connection {
    pub fn publisher(&self) -> Publisher {
        Publisher(self.commands.clone())
    }
    pub fn send(&self, c: Command) {
        // The task only ends after Shutdown; a send after that has nowhere to go.
        let _ = self.commands.send(c);
    }
    pub fn publish(&self, m: Outgoing) {
        self.send(Command::Publish(m));
    }
    pub fn stats(&self) -> OutboxStats {
        *self.stats.borrow()
    }
    /// Flushes (at most `within`), disconnects and waits for the task to end.
    pub async fn shutdown(self, within: Duration) {
        self.send(Command::Shutdown { within });
        let mut task = self.task;
        if tokio::time::timeout(within + Duration::from_secs(4), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub client_id: String,
    pub availability_topic: String,
    pub password: Option<String>,
    pub tls: Option<rumqttc::TlsConfiguration>,
    /// Seconds the broker keeps the session after a disconnect (v5): requests published
    /// meanwhile wait in it. 0 for a pool worker without cameras, so that the broker stops
    /// handing it jobs as soon as it is gone (the camera nodes send them again).
    pub session_expiry: u32,
}

/// Reads the TLS material and the password file named by the configuration.
pub fn connect_spec(
    cfg: &MqttConfig,
    client_id: String,
    availability_topic: String,
) -> Result<ConnectSpec, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let password = if !cfg.password_file.as_os_str().is_empty() {
        Some(
            String::from_utf8_lossy(&read(&cfg.password_file)?)
                .trim_end()
                .to_owned(),
        )
    } else if !cfg.password.is_empty() {
        Some(cfg.password.clone())
    } else {
        None
    };
    let tls = if !cfg.tls {
        None
    } else if cfg.ca_file.as_os_str().is_empty() {
        if !cfg.client_cert.as_os_str().is_empty() {
            return Err("mqtt.client_cert needs mqtt.ca_file as well".into());
        }
        Some(rumqttc::TlsConfiguration::default())
    } else {
        let client_auth = if cfg.client_cert.as_os_str().is_empty() {
            None
        } else {
            Some((read(&cfg.client_cert)?, read(&cfg.client_key)?))
        };
        Some(rumqttc::TlsConfiguration::Simple {
            ca: read(&cfg.ca_file)?,
            alpn: None,
            client_auth,
        })
    };
    Ok(ConnectSpec {
        client_id,
        availability_topic,
        password,
        tls,
        session_expiry: 3600,
    })
}

/// Publishes the daemon may have unacknowledged at once.
const MAX_INFLIGHT: usize = 10;
/// Replies and events the outbox holds while the broker is away.
const OUTBOX_CAPACITY: usize = 1000;

/// Opens the connection: starts the driver and the connection task. `subscriptions` are
/// made on every session; events arrive on the returned channel (bounded in practice by
/// the broker: unacknowledged requests are at most its in-flight window).
pub fn start(
    cfg: &MqttConfig,
    spec: ConnectSpec,
    subscriptions: Vec<String>,
) -> (Connection, mpsc::UnboundedReceiver<MqttEvent>) {
    let keepalive = Duration::from_secs(cfg.keepalive);
    // Larger than max_payload, so an oversized request is still read and answered with
    // `too_large`; anything larger is refused by the broker (v5) or resets the session.
    let max = cfg.max_payload * 4 + 64 * 1024;
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    // Room for the window and every acknowledgement a burst can owe.
    let cap = MAX_INFLIGHT + 256;
    let (steps_tx, steps_rx) = mpsc::unbounded_channel();
    let client = match cfg.protocol {
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&spec.client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keepalive);
            o.set_max_packet_size(Some(max as u32));
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(spec.session_expiry));
            o.set_manual_acks(true);
            o.set_receive_maximum(Some(64));
            o.set_network_options(net);
            o.set_last_will(v5::mqttbytes::v5::LastWill::new(
                spec.availability_topic.clone(),
                "offline",
                v5::mqttbytes::QoS::AtLeastOnce,
                true,
                None,
            ));
            if !cfg.username.is_empty() {
                o.set_credentials(&cfg.username, spec.password.clone().unwrap_or_default());
            }
            if let Some(tls) = spec.tls.clone() {
                o.set_transport(rumqttc::Transport::tls_with_config(tls));
            }
            let (client, el) = v5::AsyncClient::new(o, cap);
            tokio::spawn(drive(el, steps_tx));
            Client::V5(client)
        }
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&spec.client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keepalive);
            // Outgoing: what we publish (snapshots) is not bounded by what we accept;
            // rumqttc's default outgoing limit would turn a large snapshot into a
            // reconnect loop. MQTT's own limit is 256 MiB.
            o.set_max_packet_size(max, 256 << 20);
            o.set_clean_session(false);
            o.set_manual_acks(true);
            o.set_last_will(rumqttc::LastWill::new(
                spec.availability_topic.clone(),
                "offline",
                rumqttc::QoS::AtLeastOnce,
                true,
            ));
            if !cfg.username.is_empty() {
                o.set_credentials(&cfg.username, spec.password.clone().unwrap_or_default());
            }
            if let Some(tls) = spec.tls.clone() {
                o.set_transport(rumqttc::Transport::tls_with_config(tls));
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, cap);
            el.set_network_options(net);
            tokio::spawn(drive(el, steps_tx));
            Client::V311(client)
        }
    };
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let (stats_tx, stats) = watch::channel(OutboxStats::default());
    let task = tokio::spawn(
        Task {
            client,
            outbox: outbox::Outbox::new(OUTBOX_CAPACITY, MAX_INFLIGHT),
            subscriptions,
            connection: 0,
            connected: false,
            owed: Vec::new(),
            events: events_tx,
            stats: stats_tx,
        }
        .run(steps_rx, commands_rx),
    );
    (
        Connection {
            commands,
            stats,
            task,
        },
        events,
    )
}

/// The client half of either protocol version; every call returns at once.
#[derive(Debug)]
enum Client {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

impl Client {
    fn try_publish(&self, m: &Outgoing) -> bool {
        match self {
            Self::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    correlation_data: m.correlation.clone(),
                    message_expiry_interval: m.expiry,
                    response_topic: m.response_topic.clone(),
                    ..Default::default()
                };
                c.try_publish_with_properties(
                    m.topic.clone(),
                    v5::mqttbytes::QoS::AtLeastOnce,
                    m.retain(),
                    m.payload.clone(),
                    props,
                )
                .is_ok()
            }
            Self::V311(c) => c
                .try_publish(
                    m.topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    m.retain(),
                    m.payload.to_vec(),
                )
                .is_ok(),
        }
    }

    fn try_ack(&self, pkid: u16) -> bool {
        match self {
            Self::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new(
                    "",
                    v5::mqttbytes::QoS::AtLeastOnce,
                    Bytes::new(),
                    None,
                );
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
            Self::V311(c) => {
                let mut p = rumqttc::Publish::new("", rumqttc::QoS::AtLeastOnce, Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
        }
    }

    fn try_subscribe(&self, filters: &[String]) -> bool {
        match self {
            Self::V5(c) => c
                .try_subscribe_many(filters.iter().map(|f| {
                    v5::mqttbytes::v5::Filter::new(f.clone(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .is_ok(),
            Self::V311(c) => c
                .try_subscribe_many(
                    filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)
                    }),
                )
                .is_ok(),
        }
    }

    fn try_disconnect(&self) -> bool {
        match self {
            Self::V5(c) => c.try_disconnect().is_ok(),
            Self::V311(c) => c.try_disconnect().is_ok(),
        }
    }
}

/// What one poll of an event loop amounted to, whatever the protocol version.
#[derive(Debug)]
enum Step {
    Connected {
        session_present: bool,
    },
    Message {
        topic: String,
        payload: Bytes,
        response_topic: Option<String>,
        correlation: Option<Bytes>,
        expiry: Option<u32>,
        dup: bool,
        pkid: Option<u16>,
    },
    /// The client wrote a PUBLISH with this packet id.
    Sent(u16),
    PubAck(u16),
    /// One flag per filter of the last SUBSCRIBE: granted or not.
    SubAck(Vec<bool>),
    /// Our DISCONNECT went out: the connection is finished.
    Closed,
    Error {
        reason: String,
        /// A message larger than we accept: a persistent session would deliver it again
        /// on every reconnect.
        oversized: bool,
    },
    Other,
}

/// The two rumqttc event loops (v5 and v3.1.1), seen through one interface.
trait EventSource: Send + 'static {
    fn step(&mut self) -> impl std::future::Future<Output = Step> + Send;
    /// The next connection starts without a session (drops what the broker queued).
    fn forget_session(&mut self, forget: bool);
}

/// Whether a v5 connection error is a packet over our size limit.
fn v5_oversized(e: &v5::ConnectionError) -> bool {
    matches!(
        e,
        v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
        ))
    )
}

/// Whether a v3.1.1 connection error is a packet over our size limit.
fn v311_oversized(e: &rumqttc::ConnectionError) -> bool {
    matches!(
        e,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

impl EventSource for v5::EventLoop {
    async fn step(&mut self) -> Step {
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        match self.poll().await {
            Err(e) => Step::Error {
                reason: e.to_string(),
                oversized: v5_oversized(&e),
            },
            Ok(v5::Event::Incoming(Packet::ConnAck(ack))) => Step::Connected {
                session_present: ack.session_present,
            },
            Ok(v5::Event::Incoming(Packet::Publish(p))) => {
                let props = p.properties.unwrap_or_default();
                Step::Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    response_topic: props.response_topic,
                    correlation: props.correlation_data,
                    expiry: props.message_expiry_interval,
                    dup: p.dup,
                    pkid: (p.qos != v5::mqttbytes::QoS::AtMostOnce).then_some(p.pkid),
                }
            }
            Ok(v5::Event::Incoming(Packet::PubAck(a))) => Step::PubAck(a.pkid),
            Ok(v5::Event::Incoming(Packet::SubAck(a))) => Step::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    .collect(),
            ),
            Ok(v5::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Step::Sent(pkid),
            Ok(v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Step::Closed,
            Ok(_) => Step::Other,
        }
    }
    fn forget_session(&mut self, forget: bool) {
        self.options.set_clean_start(forget);
    }
}

impl EventSource for rumqttc::EventLoop {
    async fn step(&mut self) -> Step {
        use rumqttc::{Packet, SubscribeReasonCode};
        match self.poll().await {
            Err(e) => Step::Error {
                reason: e.to_string(),
                oversized: v311_oversized(&e),
            },
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) => Step::Connected {
                session_present: ack.session_present,
            },
            Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => Step::Message {
                topic: p.topic,
                payload: p.payload,
                response_topic: None,
                correlation: None,
                expiry: None,
                dup: p.dup,
                pkid: (p.qos != rumqttc::QoS::AtMostOnce).then_some(p.pkid),
            },
            Ok(rumqttc::Event::Incoming(Packet::PubAck(a))) => Step::PubAck(a.pkid),
            Ok(rumqttc::Event::Incoming(Packet::SubAck(a))) => Step::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    .collect(),
            ),
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Step::Sent(pkid),
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Step::Closed,
            Ok(_) => Step::Other,
        }
    }
    fn forget_session(&mut self, forget: bool) {
        self.mqtt_options.set_clean_session(forget);
    }
}

/// Polls the event loop for ever (never cancelled mid-packet), forwarding each step; after
/// an error waits before polling again, which reconnects.
async fn drive(mut el: impl EventSource, tx: mpsc::UnboundedSender<Step>) {
    let mut backoff = reconnect_backoff();
    let mut forgetting = false;
    loop {
        let step = el.step().await;
        let wait = match &step {
            Step::Connected { .. } => {
                backoff.reset();
                if forgetting {
                    el.forget_session(false);
                    forgetting = false;
                }
                None
            }
            Step::Error { oversized, .. } => {
                if *oversized {
                    // The broker would send the same message again on every session.
                    el.forget_session(true);
                    forgetting = true;
                }
                Some(backoff.next_delay())
            }
            _ => None,
        };
        let closed = matches!(step, Step::Closed);
        if tx.send(step).is_err() {
            break;
        }
        if closed {
            // Read on until the broker closes the connection: closing a socket with
            // unread data sends a reset, which can overtake our DISCONNECT (the broker
            // would then publish the Last Will). What arrives now is not acknowledged, so
            // the broker keeps it for the session.
            let end = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(step) = tokio::time::timeout_at(end, el.step()).await {
                if matches!(step, Step::Error { .. }) {
                    break;
                }
            }
            break;
        }
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
    }
}

/// Reconnect delays: 0.5 s doubling to 30 s (rumqttc itself does not back off).
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

/// The connection task's state.
struct Task {
    client: Client,
    outbox: outbox::Outbox,
    subscriptions: Vec<String>,
    /// Counts connections, so that acknowledgements owed on an old one are never sent on
    /// a new one (the broker redelivers those messages instead).
    connection: u64,
    connected: bool,
    /// Acknowledgements the client's channel could not take yet.
    owed: Vec<u16>,
    events: mpsc::UnboundedSender<MqttEvent>,
    stats: watch::Sender<OutboxStats>,
}

impl Task {
    async fn run(
        mut self,
        mut steps: mpsc::UnboundedReceiver<Step>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut disconnect_sent = false;
        // After DISCONNECT: how long to wait for the driver to see the broker close.
        let linger = Duration::from_secs(3);
        loop {
            self.feed();
            let _ = self.stats.send_if_modified(|s| {
                let new = self.outbox.stats();
                let changed = *s != new;
                *s = new;
                changed
            });
            if let Some(d) = deadline {
                let flushed = self.outbox.is_empty() && self.owed.is_empty();
                if !self.connected && !disconnect_sent {
                    // Nothing can be flushed; the broker's Last Will says offline.
                    break;
                }
                if !disconnect_sent && (flushed || tokio::time::Instant::now() >= d) {
                    disconnect_sent = self.client.try_disconnect();
                }
            }
            let sleep_until = match deadline {
                Some(d) if disconnect_sent => d.max(tokio::time::Instant::now()) + linger,
                Some(d) => d,
                None => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                step = steps.recv() => match step {
                    // The driver ends once the broker closed the connection.
                    None => break,
                    Some(Step::Closed) => self.connected = false,
                    Some(step) => self.on_step(step),
                },
                cmd = commands.recv(), if deadline.is_none() => match cmd {
                    Some(Command::Publish(m)) => self.outbox.push(m),
                    Some(Command::Ack(t)) => self.ack(t),
                    Some(Command::Shutdown { within }) => {
                        // Everything sent before Shutdown is already queued.
                        while let Ok(c) = commands.try_recv() {
                            match c {
                                Command::Publish(m) => self.outbox.push(m),
                                Command::Ack(t) => self.ack(t),
                                Command::Shutdown { .. } => {}
                            }
                        }
                        deadline = Some(tokio::time::Instant::now() + within);
                    }
                    None => deadline = Some(tokio::time::Instant::now()),
                },
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                    if disconnect_sent {
                        break;
                    }
                }
            }
        }
    }

    /// Hands waiting messages and owed acknowledgements to the client while connected.
    fn feed(&mut self) {
        if !self.connected {
            return;
        }
        self.owed.retain(|&pkid| !self.client.try_ack(pkid));
        while let Some(m) = self.outbox.next_to_send() {
            if !self.client.try_publish(&m) {
                self.outbox.refused();
                break;
            }
        }
    }

    fn ack(&mut self, t: AckToken) {
        if t.connection == self.connection && self.connected && !self.client.try_ack(t.pkid) {
            self.owed.push(t.pkid);
        }
    }

    fn on_step(&mut self, step: Step) {
        match step {
            Step::Connected { session_present } => {
                self.connection += 1;
                self.connected = true;
                self.owed.clear();
                self.outbox.session(session_present);
                if !self.client.try_subscribe(&self.subscriptions) {
                    tracing::warn!("cannot queue the subscriptions");
                }
                let _ = self.events.send(MqttEvent::Connected { session_present });
            }
            Step::Message {
                topic,
                payload,
                response_topic,
                correlation,
                expiry,
                dup,
                pkid,
            } => {
                let _ = self.events.send(MqttEvent::Message(Incoming {
                    topic,
                    payload,
                    response_topic,
                    correlation,
                    expiry,
                    redelivered: dup,
                    ack: pkid.map(|pkid| AckToken {
                        connection: self.connection,
                        pkid,
                    }),
                }));
            }
            Step::Sent(pkid) => self.outbox.sent(pkid),
            Step::PubAck(pkid) => {
                for t in self.outbox.acked(pkid) {
                    self.ack(t);
                }
            }
            Step::SubAck(granted) => {
                let refused = self
                    .subscriptions
                    .iter()
                    .zip(granted.iter().chain(std::iter::repeat(&false)))
                    .filter(|(_, ok)| !**ok)
                    .map(|(f, _)| f.clone())
                    .collect();
                let _ = self.events.send(MqttEvent::Subscribed { refused });
            }
            Step::Error { reason, .. } => {
                self.connected = false;
                let _ = self.events.send(MqttEvent::Disconnected(reason));
            }
            Step::Closed | Step::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(subscriptions: &[&str]) -> (Task, mpsc::UnboundedReceiver<MqttEvent>) {
        let (client, _) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 16);
        let (events, rx) = mpsc::unbounded_channel();
        let (stats, _) = watch::channel(OutboxStats::default());
        let t = Task {
            client: Client::V311(client),
            outbox: outbox::Outbox::new(10, 10),
            subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            connection: 0,
            connected: false,
            owed: Vec::new(),
            events,
            stats,
        };
        (t, rx)
    }

    #[test]
    fn refused_subscriptions_are_reported_by_filter() {
        let (mut t, mut rx) = task(&["base/request/+", "homeassistant/status"]);
        t.on_step(Step::Connected {
            session_present: false,
        });
        assert!(matches!(rx.try_recv(), Ok(MqttEvent::Connected { .. })));
        t.on_step(Step::SubAck(vec![false, true]));
        match rx.try_recv() {
            Ok(MqttEvent::Subscribed { refused }) => assert_eq!(refused, ["base/request/+"]),
            other => panic!("{other:?}"),
        }
        // A SUBACK with fewer codes than filters refuses the rest.
        t.on_step(Step::SubAck(vec![true]));
        match rx.try_recv() {
            Ok(MqttEvent::Subscribed { refused }) => assert_eq!(refused, ["homeassistant/status"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_carry_the_acknowledgement_of_their_connection() {
        let (mut t, mut rx) = task(&["a"]);
        for _ in 0..2 {
            t.on_step(Step::Connected {
                session_present: true,
            });
        }
        let _ = (rx.try_recv(), rx.try_recv());
        t.on_step(Step::Message {
            topic: "a".into(),
            payload: Bytes::from_static(b"{}"),
            response_topic: None,
            correlation: None,
            expiry: Some(30),
            dup: true,
            pkid: Some(9),
        });
        match rx.try_recv() {
            Ok(MqttEvent::Message(m)) => {
                assert_eq!(
                    m.ack,
                    Some(AckToken {
                        connection: 2,
                        pkid: 9
                    })
                );
                assert!(m.redelivered);
                assert_eq!(m.expiry, Some(30));
            }
            other => panic!("{other:?}"),
        }
        // An acknowledgement owed on connection 1 is not sent on connection 2.
        t.ack(AckToken {
            connection: 1,
            pkid: 4,
        });
        assert!(t.owed.is_empty());
    }

    #[test]
    fn an_oversized_packet_is_recognised_as_repeating() {
        let e = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(1 << 20),
        ));
        assert!(v311_oversized(&e));
        assert!(!v311_oversized(&rumqttc::ConnectionError::NetworkTimeout));
        let e = v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded {
                pkt_size: 1 << 20,
                max: 1024,
            },
        ));
        assert!(v5_oversized(&e));
        assert!(!v5_oversized(&v5::ConnectionError::RequestsDone));
    }
}
