//! Asking a running moonwatch over MQTT v5: what `moonwatch ask --broker ...` uses.
//!
//! One short-lived connection with a clean session: subscribe to a reply topic of this
//! client's own, publish the request with a Response Topic and Correlation Data, wait for
//! the reply carrying that correlation. Every request names the skill the daemon runs, so
//! the reply is the same typed [`wire::Reply`] the daemon's tests validate.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;

use super::wire;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    /// `{prefix}/{device}`, the daemon's topic base.
    pub base: String,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

/// Why no reply came.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach the broker at {host}:{port}: {reason}")]
    Broker {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "no reply on {base}/request/{request} within {secs} s: is moonwatch running with this \
         device id (--device) and connected to this broker?"
    )]
    Timeout {
        base: String,
        request: String,
        secs: u64,
    },
    #[error("the reply to {request} is not a moonwatch reply: {reason}")]
    BadReply { request: String, reason: String },
}

impl Remote {
    /// Parses `HOST[:PORT]` (port 1883 by default).
    pub fn new(broker: &str, base: String, timeout: Duration) -> Result<Self, String> {
        let (host, port) = match broker.rsplit_once(':') {
            Some(("", _)) => return Err("--broker needs a host name".into()),
            Some((h, p)) if !h.ends_with(':') => (
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                p.parse::<u16>()
                    .map_err(|_| format!("--broker {broker:?}: {p:?} is not a port number"))?,
            ),
            _ => (broker.to_owned(), 1883),
        };
        if host.is_empty() {
            return Err("--broker needs a host name".into());
        }
        Ok(Self {
            host,
            port,
            base,
            timeout,
        })
    }

    /// Sends each `(request name, body)` in turn and returns their replies, in order.
    pub async fn ask(&self, requests: &[(String, Value)]) -> Result<Vec<wire::Reply>, RemoteError> {
        let id = format!(
            "moonwatch-cli-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let reply_topic = format!("moonwatch-cli/{id}/reply");
        let mut o = MqttOptions::new(&id, &self.host, self.port);
        o.set_clean_start(true);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(16 << 20));
        let (client, mut el) = AsyncClient::new(o, 16);
        let broker_err = |reason: String| RemoteError::Broker {
            host: self.host.clone(),
            port: self.port,
            reason,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Connect and subscribe before the first request, so no reply can be missed.
        client
            .subscribe(&reply_topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| broker_err(e.to_string()))?;
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(broker_err(e.to_string())),
                Err(_) => return Err(broker_err("no answer to CONNECT/SUBSCRIBE".into())),
            }
        }
        let mut replies = Vec::new();
        for (i, (name, body)) in requests.iter().enumerate() {
            let correlation = Bytes::from(format!("{id}/{i}"));
            let props = PublishProperties {
                response_topic: Some(reply_topic.clone()),
                correlation_data: Some(correlation.clone()),
                message_expiry_interval: Some(self.timeout.as_secs().max(1) as u32),
                ..Default::default()
            };
            client
                .publish_with_properties(
                    format!("{}/request/{name}", self.base),
                    QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                    props,
                )
                .await
                .map_err(|e| broker_err(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            let payload = loop {
                match tokio::time::timeout_at(deadline, el.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p))))
                        if p.properties
                            .as_ref()
                            .and_then(|pr| pr.correlation_data.as_ref())
                            == Some(&correlation) =>
                    {
                        break p.payload;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(broker_err(e.to_string())),
                    Err(_) => {
                        return Err(RemoteError::Timeout {
                            base: self.base.clone(),
                            request: name.clone(),
                            secs: self.timeout.as_secs(),
                        })
                    }
                }
            };
            let reply = serde_json::from_slice(&payload).map_err(|e| RemoteError::BadReply {
                request: name.clone(),
                reason: e.to_string(),
            })?;
            replies.push(reply);
        }
        let _ = client.disconnect().await;
        // Let the DISCONNECT go out.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while !matches!(
                el.poll().await,
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
            ) {}
        })
        .await;
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let r = |s: &str| Remote::new(s, "b".into(), Duration::from_secs(1));
        let a = r("mqtt.local").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("mqtt.local", 1883));
        let a = r("10.0.0.2:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.2", 1884));
        let a = r("[::1]:1885").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1885));
        assert!(r("host:notaport").is_err());
        assert!(r(":1883").is_err());
    }
}
