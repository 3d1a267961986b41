//! The broker connection: MQTT v5 or v3.1.1 through `rumqttc`, behind one small [`Link`]
//! handle and one stream of [`MqttEvent`]s. The event loop is driven here: it reconnects
//! with backoff, and tells the daemon when a session starts so it can resubscribe.

pub mod api;
pub mod discovery;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::config::{MqttConfig, Protocol};

/// A message from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT v5 Response Topic.
    pub response_topic: Option<String>,
    /// MQTT v5 Correlation Data.
    pub correlation: Option<Bytes>,
}

/// What the connection reports.
#[derive(Debug, Clone)]
pub enum MqttEvent {
    /// A session started; `session_present` false means subscriptions must be made again.
    Connected {
        session_present: bool,
    },
    /// The connection failed; it is retried with backoff.
    Disconnected(String),
    Message(Incoming),
}

/// Publishing side of the connection (cheap to clone).
#[derive(Debug, Clone)]
pub enum Link {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

impl Link {
    /// Publishes at QoS 1; `correlation` is sent as v5 Correlation Data (ignored on v3.1.1).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        correlation: Option<Vec<u8>>,
    ) -> Result<(), String> {
        match self {
            Self::V5(c) => {
                let props = v5::mqttbytes::v5::PublishProperties {
                    correlation_data: correlation.map(Bytes::from),
                    ..Default::default()
                };
                c.publish_with_properties(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                    props,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Self::V311(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Self::V5(c) => c
                .subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Self::V311(c) => c
                .subscribe(topic, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            Self::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Self::V311(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectSpec {
    pub client_id: String,
    pub availability_topic: String,
    pub password: Option<String>,
    pub tls: Option<rumqttc::TlsConfiguration>,
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
    })
}

/// Opens the connection and starts driving it on the runtime. Events arrive on the
/// returned channel until [`Link::disconnect`] has been sent and flushed.
pub fn start(
    cfg: &MqttConfig,
    spec: ConnectSpec,
) -> (Link, mpsc::Receiver<MqttEvent>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let keepalive = Duration::from_secs(cfg.keepalive);
    // Larger than max_payload, so an oversized request is still read and answered with
    // `too_large` rather than breaking the connection.
    let max = cfg.max_payload * 4 + 64 * 1024;
    match cfg.protocol {
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&spec.client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keepalive);
            o.set_max_packet_size(Some(max as u32));
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(3600));
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
            let (client, el) = v5::AsyncClient::new(o, 256);
            (Link::V5(client), rx, drive(el, tx))
        }
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&spec.client_id, &cfg.host, cfg.port);
            o.set_keep_alive(keepalive);
            o.set_max_packet_size(max, max);
            o.set_clean_session(false);
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
            let (client, el) = rumqttc::AsyncClient::new(o, 256);
            (Link::V311(client), rx, drive(el, tx))
        }
    }
}

/// What one poll of an event loop amounted to, whatever the protocol version.
enum Step {
    Connected {
        session_present: bool,
    },
    Message(Incoming),
    /// Our DISCONNECT went out: the connection is finished.
    Closed,
    Other,
}

/// The two rumqttc event loops (v5 and v3.1.1), seen through one interface.
trait EventSource: Send + 'static {
    fn step(&mut self) -> impl std::future::Future<Output = Result<Step, String>> + Send;
}

impl EventSource for v5::EventLoop {
    async fn step(&mut self) -> Result<Step, String> {
        use v5::mqttbytes::v5::Packet;
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            v5::Event::Incoming(Packet::ConnAck(ack)) => Step::Connected {
                session_present: ack.session_present,
            },
            v5::Event::Incoming(Packet::Publish(p)) => {
                let props = p.properties.unwrap_or_default();
                Step::Message(Incoming {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    response_topic: props.response_topic,
                    correlation: props.correlation_data,
                })
            }
            v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) => Step::Closed,
            _ => Step::Other,
        })
    }
}

impl EventSource for rumqttc::EventLoop {
    async fn step(&mut self) -> Result<Step, String> {
        use rumqttc::Packet;
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            rumqttc::Event::Incoming(Packet::ConnAck(ack)) => Step::Connected {
                session_present: ack.session_present,
            },
            rumqttc::Event::Incoming(Packet::Publish(p)) => Step::Message(Incoming {
                topic: p.topic,
                payload: p.payload,
                response_topic: None,
                correlation: None,
            }),
            rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => Step::Closed,
            _ => Step::Other,
        })
    }
}

/// Drives an event loop on the runtime: forwards sessions and messages, and after an error
/// waits before polling again (which reconnects).
fn drive(mut el: impl EventSource, tx: mpsc::Sender<MqttEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = reconnect_backoff();
        loop {
            let event = match el.step().await {
                Ok(Step::Connected { session_present }) => {
                    backoff.reset();
                    MqttEvent::Connected { session_present }
                }
                Ok(Step::Message(m)) => MqttEvent::Message(m),
                Ok(Step::Closed) => break,
                Ok(Step::Other) => continue,
                Err(e) => {
                    if tx.send(MqttEvent::Disconnected(e)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    })
}

/// Reconnect delays: 0.5 s doubling to 30 s (rumqttc itself does not back off).
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}
