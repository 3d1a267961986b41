//! What waits to be published, owned by the connection task and never awaited by anyone.
//!
//! Replies and events wait in one bounded queue (the oldest is dropped, and counted, when it
//! is full); retained state is latest-value-wins per topic, so an outage of any length holds
//! one message per retained topic. A few messages at a time are handed to the MQTT client;
//! each is tracked by its packet id until the broker's PUBACK, and a reply carries the
//! acknowledgements of the requests it answers, released only then. Pure: no sockets, no
//! clocks; `tests` drive it with the events a connection would produce.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The acknowledgement owed for one received QoS 1 message: sent to the broker only once
/// its reply has been acknowledged, and only on the connection it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// Which connection (session) the message arrived on; counts from 1.
    pub connection: u64,
    pub pkid: u16,
}

/// How a message is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A reply to a request: queued in order, bounded.
    Reply,
    /// An event (trigger begin/end): queued in order, bounded.
    Event,
    /// Retained state: only the newest message per topic is kept.
    Retained,
}

/// One message to publish (always QoS 1).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub class: Class,
    /// MQTT v5 Correlation Data (ignored on v3.1.1).
    pub correlation: Option<Bytes>,
    /// MQTT v5 Message Expiry Interval in seconds (ignored on v3.1.1).
    pub expiry: Option<u32>,
    /// MQTT v5 Response Topic (a pool job's; ignored on v3.1.1).
    pub response_topic: Option<String>,
    /// Requests acknowledged to the broker once this message is.
    pub acks: Vec<AckToken>,
}

impl Outgoing {
    pub fn retained(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(topic, payload, Class::Retained)
    }
    pub fn event(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(topic, payload, Class::Event)
    }
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, class: Class) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            class,
            correlation: None,
            expiry: None,
            response_topic: None,
            acks: Vec::new(),
        }
    }
    pub fn retain(&self) -> bool {
        self.class == Class::Retained
    }
}

/// Counters shown in `stats`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct OutboxStats {
    /// Messages waiting (queue and retained) and handed to the client without a PUBACK yet.
    pub queued: usize,
    /// Replies and events dropped because the queue was full.
    pub dropped: u64,
    /// Retained messages replaced by a newer one before they were sent.
    pub superseded: u64,
    /// Messages the broker acknowledged.
    pub delivered: u64,
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Outgoing>,
    capacity: usize,
    /// Retained messages by topic, with the order they were first queued in.
    retained: HashMap<String, (u64, Outgoing)>,
    retained_order: BTreeMap<u64, String>,
    next_order: u64,
    /// Handed to the client, waiting for the packet id it will give them.
    handed: VecDeque<Outgoing>,
    /// Sent, waiting for PUBACK, by packet id.
    inflight: BTreeMap<u16, Outgoing>,
    max_inflight: usize,
    stats: OutboxStats,
}

impl Outbox {
    /// `capacity` bounds replies and events; `max_inflight` bounds unacknowledged publishes.
    pub fn new(capacity: usize, max_inflight: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            retained: HashMap::new(),
            retained_order: BTreeMap::new(),
            next_order: 0,
            handed: VecDeque::new(),
            inflight: BTreeMap::new(),
            max_inflight: max_inflight.max(1),
            stats: OutboxStats::default(),
        }
    }

    /// Queues a message; never blocks, never grows without bound.
    pub fn push(&mut self, m: Outgoing) {
        if m.class == Class::Retained {
            if let Some((order, old)) = self.retained.remove(&m.topic) {
                self.retained_order.remove(&order);
                self.stats.superseded += 1;
                // The acknowledgements an older copy carried travel with the newer one.
                let mut m = m;
                m.acks.extend(old.acks);
                self.insert_retained(m);
            } else {
                self.insert_retained(m);
            }
            return;
        }
        if self.queue.len() >= self.capacity {
            self.queue.pop_front();
            self.stats.dropped += 1;
        }
        self.queue.push_back(m);
    }

    fn insert_retained(&mut self, m: Outgoing) {
        let order = self.next_order;
        self.next_order += 1;
        self.retained_order.insert(order, m.topic.clone());
        self.retained.insert(m.topic.clone(), (order, m));
    }

    /// The next message to hand to the client, if the in-flight window has room. Replies
    /// and events go first, then retained state in the order it was queued.
    pub fn next_to_send(&mut self) -> Option<Outgoing> {
        if self.handed.len() + self.inflight.len() >= self.max_inflight {
            return None;
        }
        let m = match self.queue.pop_front() {
            Some(m) => m,
            None => {
                let (&order, _) = self.retained_order.iter().next()?;
                let topic = self.retained_order.remove(&order)?;
                self.retained.remove(&topic)?.1
            }
        };
        self.handed.push_back(m.clone());
        Some(m)
    }

    /// The client could not take the message `next_to_send` returned: it goes back to the front.
    pub fn refused(&mut self) {
        if let Some(m) = self.handed.pop_back() {
            self.requeue(m);
        }
    }

    /// The client sent a PUBLISH with this packet id. A packet id already in flight is a
    /// retransmission; any other belongs to the oldest message handed over.
    pub fn sent(&mut self, pkid: u16) {
        if self.inflight.contains_key(&pkid) {
            return;
        }
        if let Some(m) = self.handed.pop_front() {
            self.inflight.insert(pkid, m);
        }
    }

    /// The broker acknowledged packet `pkid`: returns the requests now to be acknowledged.
    pub fn acked(&mut self, pkid: u16) -> Vec<AckToken> {
        match self.inflight.remove(&pkid) {
            Some(m) => {
                self.stats.delivered += 1;
                m.acks
            }
            None => Vec::new(),
        }
    }

    /// A new connection began. Without a session the client has forgotten what it held, so
    /// every message handed over and not acknowledged is queued again (at least once).
    pub fn session(&mut self, present: bool) {
        if present {
            return;
        }
        let mut back: Vec<Outgoing> = std::mem::take(&mut self.inflight).into_values().collect();
        back.extend(self.handed.drain(..));
        for m in back.into_iter().rev() {
            self.requeue(m);
        }
    }

    fn requeue(&mut self, m: Outgoing) {
        if m.class == Class::Retained {
            // A newer value queued meanwhile wins.
            if let Some((_, newer)) = self.retained.get_mut(&m.topic) {
                newer.acks.extend(m.acks);
                self.stats.superseded += 1;
            } else {
                self.insert_retained(m);
            }
        } else {
            self.queue.push_front(m);
            if self.queue.len() > self.capacity {
                self.queue.pop_back();
                self.stats.dropped += 1;
            }
        }
    }

    /// Nothing waits and nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.retained.is_empty()
            && self.handed.is_empty()
            && self.inflight.is_empty()
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            queued: self.queue.len()
                + self.retained.len()
                + self.handed.len()
                + self.inflight.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: usize, ack: Option<u16>) -> Outgoing {
        let mut m = Outgoing::new(format!("r/{n}"), vec![n as u8], Class::Reply);
        m.acks = ack
            .map(|pkid| AckToken {
                connection: 1,
                pkid,
            })
            .into_iter()
            .collect();
        m
    }

    #[test]
    fn replies_are_bounded_and_drops_are_counted() {
        let mut o = Outbox::new(3, 10);
        for n in 0..5 {
            o.push(reply(n, None));
        }
        assert_eq!(o.stats().dropped, 2);
        let topics: Vec<String> = std::iter::from_fn(|| o.next_to_send())
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["r/2", "r/3", "r/4"]);
    }

    #[test]
    fn retained_state_is_latest_value_wins_and_keeps_acks() {
        let mut o = Outbox::new(8, 10);
        for n in 0..100u8 {
            let mut m = Outgoing::retained("t/state", vec![n]);
            if n == 3 {
                m.acks.push(AckToken {
                    connection: 1,
                    pkid: 9,
                });
            }
            o.push(m);
        }
        o.push(Outgoing::retained("t/other", vec![1]));
        assert_eq!(o.stats().queued, 2);
        assert_eq!(o.stats().superseded, 99);
        let m = o.next_to_send().expect("one");
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("t/state", &[99u8][..]));
        o.sent(1);
        assert_eq!(
            o.acked(1),
            vec![AckToken {
                connection: 1,
                pkid: 9
            }]
        );
    }

    #[test]
    fn the_window_bounds_what_is_handed_over_and_acks_follow_pubacks() {
        let mut o = Outbox::new(100, 2);
        for n in 0..4 {
            o.push(reply(n, Some(100 + n as u16)));
        }
        assert!(o.next_to_send().is_some() && o.next_to_send().is_some());
        assert!(o.next_to_send().is_none(), "window of two is full");
        o.sent(7);
        o.sent(8);
        // A retransmission of 7 after a reconnect changes nothing.
        o.sent(7);
        assert_eq!(o.acked(8)[0].pkid, 101);
        assert_eq!(o.acked(7)[0].pkid, 100);
        assert_eq!(o.acked(7), vec![], "a second PUBACK is ignored");
        assert_eq!(o.next_to_send().expect("room again").topic, "r/2");
    }

    #[test]
    fn a_lost_session_queues_unacknowledged_messages_again_in_order() {
        let mut o = Outbox::new(100, 10);
        for n in 0..3 {
            o.push(reply(n, None));
        }
        let _ = (o.next_to_send(), o.next_to_send(), o.next_to_send());
        o.sent(1); // r/0 in flight; r/1 and r/2 handed but not yet sent
        o.session(true);
        assert!(
            o.next_to_send().is_none(),
            "a resumed session resends them itself"
        );
        o.session(false);
        let topics: Vec<String> = std::iter::from_fn(|| o.next_to_send())
            .map(|m| m.topic)
            .collect();
        assert_eq!(topics, ["r/0", "r/1", "r/2"]);
        assert!(!o.is_empty());
    }

    #[test]
    fn refused_messages_go_back_to_the_front() {
        let mut o = Outbox::new(10, 10);
        o.push(reply(0, None));
        o.push(reply(1, None));
        let m = o.next_to_send().expect("r/0");
        assert_eq!(m.topic, "r/0");
        o.refused();
        assert_eq!(o.next_to_send().expect("again").topic, "r/0");
    }
}
