//! The workers as a camera node knows them: their heartbeats, which are healthy, which are
//! suspect and why, and what `stats` and `health_check` say of them.

use super::*;

/// A worker as its heartbeats and this node's jobs show it.
#[derive(Debug)]
pub(super) struct Worker {
    /// When its last heartbeat came.
    pub(super) seen: Instant,
    pub(super) status: WorkerStatus,
    /// Why it is avoided.
    pub(super) suspect: Option<String>,
    /// Jobs of this node it holds (sent to it, not yet answered).
    pub(super) holds: usize,
    /// When this node last sent it a job (ties go to the one sent to least recently).
    pub(super) last_sent: Option<Instant>,
    pub(super) answered: u64,
    pub(super) timeouts: u64,
    /// When it last finished a job (an answer came, or its `served` grew).
    pub(super) progress: Instant,
}

impl Worker {
    /// Its heartbeat interval, as it says, within reason (a heartbeat is anyone's input).
    pub(super) fn interval(&self) -> Duration {
        Duration::from_secs(self.status.interval_s.clamp(1, MAX_INTERVAL_S))
    }

    /// Its heartbeat is fresh enough to count it at all (three missed: gone).
    pub(super) fn live(&self, now: Now) -> bool {
        self.status.online && now.mono.duration_since(self.seen) <= self.interval() * 3 + GONE_SLACK
    }

    /// Its last heartbeat is no older than two intervals and a little (a stalled process
    /// stops them first).
    pub(super) fn on_time(&self, now: Now) -> bool {
        now.mono.duration_since(self.seen) <= self.interval() * 2 + LATE_SLACK
    }

    /// Live, trusted, on time and not full.
    pub(super) fn healthy(&self, now: Now) -> bool {
        self.live(now)
            && self.suspect.is_none()
            && self.on_time(now)
            && self.status.queue_depth < self.status.max_pending.max(1)
    }

    /// Jobs it runs at once, as it says (at least one, at most [`MAX_SLOTS`]).
    pub(super) fn slots(&self) -> usize {
        self.status.slots.clamp(1, MAX_SLOTS)
    }

    pub(super) fn room(&self) -> usize {
        self.slots().saturating_sub(self.holds)
    }
}

/// The longest heartbeat interval believed (an hour).
pub(super) const MAX_INTERVAL_S: u64 = 3600;
/// The most slots one worker is believed to have.
pub(super) const MAX_SLOTS: usize = 64;
/// Workers remembered: heartbeats from more ids than this are ignored (a heartbeat is
/// anyone's input).
pub(super) const MAX_WORKERS: usize = 256;
/// A worker not heard from for this long, holding nothing, is forgotten.
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Grace on top of three heartbeat intervals before a worker counts as gone.
pub(super) const GONE_SLACK: Duration = Duration::from_secs(5);
/// Grace on top of two heartbeat intervals before a worker's heartbeat counts as late.
const LATE_SLACK: Duration = Duration::from_secs(1);

impl Offload {
    pub(super) fn live_count(&self, now: Now) -> usize {
        self.workers.values().filter(|w| w.live(now)).count()
    }

    pub(super) fn on_heartbeat(&mut self, now: Now, id: String, payload: &[u8]) {
        // An empty retained message clears a worker.
        let Ok(status) = serde_json::from_slice::<WorkerStatus>(payload) else {
            self.workers.remove(&id);
            return;
        };
        if !self.workers.contains_key(&id) && self.workers.len() >= MAX_WORKERS {
            tracing::warn!(worker = %id, "more than {MAX_WORKERS} pool workers: heartbeat ignored");
            return;
        }
        let timeout = self.timeout;
        let w = self.workers.entry(id.clone()).or_insert_with(|| Worker {
            seen: now.mono,
            status: status.clone(),
            suspect: None,
            holds: 0,
            last_sent: None,
            answered: 0,
            timeouts: 0,
            progress: now.mono,
        });
        let finished = status.served > w.status.served || status.queue_depth == 0;
        if finished {
            w.progress = now.mono;
        }
        if w.suspect.is_some() && status.online && status.queue_depth == 0 {
            // Nothing waits there: whatever held it is over.
            tracing::info!(worker = %id, "pool worker reports an empty queue; trusted again");
            w.suspect = None;
        }
        if w.suspect.is_none() && now.mono.duration_since(w.progress) > timeout * 2 {
            w.suspect = Some(format!(
                "it has had work without finishing a job for {} s",
                now.mono.duration_since(w.progress).as_secs()
            ));
            tracing::warn!(worker = %id, "pool worker avoided: busy without progress");
        }
        w.seen = now.mono;
        w.status = status;
    }

    pub(super) fn suspect(&mut self, id: &str, why: String) {
        if let Some(w) = self.workers.get_mut(id) {
            w.timeouts += 1;
            if w.suspect.is_none() {
                tracing::warn!(worker = %id, "pool worker avoided: {why}");
            }
            w.suspect = Some(why);
        }
    }

    /// A job sent to the share was not answered: a stalled member took it (the workers
    /// whose heartbeat stopped since), or, while every known worker said it was idle, a
    /// member that cannot receive it (a denied shared subscription) swallowed it.
    pub(super) fn share_timed_out(&mut self, now: Now, sent: Instant) {
        let live: Vec<&Worker> = self.workers.values().filter(|w| w.live(now)).collect();
        let all_idle = !live.is_empty()
            && live
                .iter()
                .all(|w| w.seen > sent && w.status.queue_depth == 0);
        if all_idle {
            self.stats.lost += 1;
            self.share_lost = Some(now.mono);
            tracing::warn!(
                group = %self.group,
                "a job sent to the shared subscription was lost while every known worker was \
                 idle: a client in the group cannot receive jobs (a denied $share \
                 subscription?); jobs go on workers' direct topics"
            );
            return;
        }
        let silent: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.live(now) && w.seen <= sent)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            self.suspect(&id, "no heartbeat since a job it may hold was sent".into());
        }
    }

    /// The pool's figures, with each worker's.
    pub(in crate::daemon::core) fn stats(&self, now: Now) -> PoolStats {
        let mut s = self.stats.clone();
        s.workers = self.live_count(now);
        s.in_flight = self.jobs.len();
        s.window = self.window(now);
        s.by_worker = self
            .workers
            .iter()
            .map(|(id, w)| {
                let v = wire::WorkerStats {
                    live: w.live(now),
                    healthy: w.healthy(now),
                    suspect: w.suspect.clone(),
                    holds: w.holds,
                    answered: w.answered,
                    timeouts: w.timeouts,
                    queue_depth: w.status.queue_depth,
                    heartbeat_age_s: now.mono.duration_since(w.seen).as_secs_f64(),
                };
                (id.clone(), v)
            })
            .collect();
        s
    }

    /// The pool at a glance, for the server's state (Home Assistant's pool sensor).
    pub(in crate::daemon::core) fn summary(&self, now: Now) -> wire::ServerPool {
        wire::ServerPool {
            healthy: self.workers.values().filter(|w| w.healthy(now)).count(),
            live: self.live_count(now),
            suspect: self
                .workers
                .iter()
                .filter(|(_, w)| w.live(now))
                .filter_map(|(id, w)| w.suspect.as_ref().map(|why| format!("{id}: {why}")))
                .collect(),
            in_flight: self.jobs.len(),
            window: self.window(now),
            timeouts: self.stats.timeouts,
            lost: self.stats.lost,
        }
    }

    /// What health_check reports of the pool.
    pub(in crate::daemon::core) fn problems(&self, now: Now) -> Vec<String> {
        let mut p: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.live(now))
            .filter_map(|(id, w)| {
                w.suspect
                    .as_ref()
                    .map(|why| format!("pool worker {id} is avoided: {why}"))
            })
            .collect();
        if self
            .share_lost
            .is_some_and(|t| now.mono.duration_since(t) < SHARE_DISTRUST)
        {
            p.push(format!(
                "{} job(s) sent to the shared subscription $share/{}/{}/request/+ were lost \
                 while every known worker was idle: a client in that group cannot receive \
                 them (a shared subscription its ACL denies; see docs/fleet.md)",
                self.stats.lost, self.group, self.base
            ));
        }
        p
    }
}
