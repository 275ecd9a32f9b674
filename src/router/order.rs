//! Per-reference ordering of ingress work.
//!
//! The router handles many ingress messages at once (up to the prefetch), so
//! without care a message could overtake one it depends on: a recall (`13`)
//! published right after its envelope, or a repeat of an envelope whose first
//! copy is still being accepted, would find no record yet. The consumer asks
//! the [`Sequencer`] for a [`Ticket`] in the order the broker delivered the
//! messages, *before* it hands them to concurrent tasks; a ticket is ready
//! only when every earlier message it depends on has finished.
//!
//! Invariants:
//! - an envelope depends on the earlier in-flight envelope with the same
//!   `message_id` (a repeat waits for the first copy);
//! - a status message depends on the in-flight envelope whose `message_id` is
//!   its `lgsp-ref` (any source: the check is by id, so it errs on waiting);
//! - messages with no such dependency never wait, so one source's backlog does
//!   not serialise the others;
//! - when the awaited message failed (it will come again), the dependant is
//!   told so and must be requeued too rather than handled out of order;
//! - the in-flight table holds one entry per envelope being handled, so it is
//!   bounded by the prefetch.
//!
//! Nothing here reads the store or the broker: it is plain bookkeeping over
//! [`Message`] headers, unit-tested below.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::core::code::AgencyCode;
use crate::core::message::Message;

/// The outcome of a finished message: `None` while running, then whether it
/// succeeded.
type Done = Option<bool>;

#[derive(Default)]
struct Table {
    next_id: u64,
    inflight: HashMap<String, (u64, watch::Receiver<Done>)>,
}

/// Hands out [`Ticket`]s in delivery order; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Sequencer {
    table: Arc<Mutex<Table>>,
    turnstiles: Arc<Mutex<HashMap<AgencyCode, Arc<Turnstile>>>>,
}

/// A message's place in line: await [`Ticket::ready`], handle the message,
/// then [`Ticket::finish`]. Dropping a ticket unfinished counts as a failure.
pub(crate) struct Ticket {
    wait: Option<watch::Receiver<Done>>,
    own: Option<Own>,
    turn: Option<Turn>,
}

struct Own {
    table: Arc<Mutex<Table>>,
    key: String,
    id: u64,
    tx: watch::Sender<Done>,
}

impl Sequencer {
    /// A sequencer with nothing in flight.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The ticket of `m`, the next message delivered. Must be called in
    /// delivery order, from one task.
    pub(crate) fn admit(&self, m: &Message) -> Ticket {
        let kind = m.routing_key.split('.').next().unwrap_or("");
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            "envelope" => {
                let Some(mid) = m.message_id.as_deref().filter(|s| !s.is_empty()) else {
                    return Ticket::free();
                };
                let wait = table.inflight.get(mid).map(|(_, rx)| rx.clone());
                table.next_id += 1;
                let id = table.next_id;
                let (tx, rx) = watch::channel(None);
                table.inflight.insert(mid.to_owned(), (id, rx));
                Ticket {
                    wait,
                    turn: None,
                    own: Some(Own {
                        table: self.table.clone(),
                        key: mid.to_owned(),
                        id,
                        tx,
                    }),
                }
            }
            "status" => Ticket {
                wait: m
                    .header("lgsp-ref")
                    .and_then(|r| table.inflight.get(r))
                    .map(|(_, rx)| rx.clone()),
                own: None,
                turn: None,
            },
            _ => Ticket::free(),
        }
    }

    /// [`Sequencer::admit`] for a message read from `source`'s own ingress
    /// queue: an envelope also gets its [`Turn`] at the rate-limit step.
    pub(crate) fn admit_from(&self, source: &AgencyCode, m: &Message) -> Ticket {
        let mut ticket = self.admit(m);
        if m.routing_key.starts_with("envelope.") {
            let gate = self
                .turnstiles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(source.clone())
                .or_insert_with(|| {
                    Arc::new(Turnstile {
                        turns: Mutex::new(Turns::default()),
                        tx: watch::channel(0).0,
                    })
                })
                .clone();
            let seq = {
                let mut t = gate.turns.lock().unwrap_or_else(|e| e.into_inner());
                t.issued += 1;
                t.issued - 1
            };
            ticket.turn = Some(Turn {
                gate,
                seq,
                released: std::sync::atomic::AtomicBool::new(false),
            });
        }
        ticket
    }

    /// Envelopes in flight (for tests).
    #[cfg(test)]
    fn inflight(&self) -> usize {
        self.table.lock().unwrap().inflight.len()
    }
}

impl Ticket {
    fn free() -> Self {
        Self {
            wait: None,
            own: None,
            turn: None,
        }
    }

    /// Its place at the rate-limit step, for an envelope read from its
    /// source's own queue.
    pub(crate) fn turn(&self) -> Option<&Turn> {
        self.turn.as_ref()
    }

    /// Resolves once every earlier message this one depends on has finished:
    /// `true` when they succeeded, `false` when one failed (requeue this one).
    pub(crate) async fn ready(&mut self) -> bool {
        let Some(rx) = self.wait.as_mut() else {
            return true;
        };
        match rx.wait_for(|d| d.is_some()).await {
            Ok(d) => d.unwrap_or(false),
            // The awaited ticket was dropped unfinished.
            Err(_) => false,
        }
    }

    /// Marks this message handled (`ok`) or failed, releasing its dependants.
    pub(crate) fn finish(mut self, ok: bool) {
        if let Some(own) = self.own.take() {
            own.release(ok);
        }
    }
}

impl Own {
    fn release(self, ok: bool) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table
            .inflight
            .get(&self.key)
            .is_some_and(|(id, _)| *id == self.id)
        {
            table.inflight.remove(&self.key);
        }
        drop(table);
        self.tx.send_replace(Some(ok));
    }
}

/// The turns of one source's envelopes at the rate-limit step: positions are
/// handed out in delivery order and pass in that order.
#[derive(Default)]
struct Turns {
    issued: u64,
    /// Every position below this one has passed (or was given up).
    passed: u64,
    /// Positions given up out of order, waiting for the ones before them.
    early: std::collections::BTreeSet<u64>,
}

/// One source's turnstile: the positions and a channel announcing `passed`.
struct Turnstile {
    turns: Mutex<Turns>,
    tx: watch::Sender<u64>,
}

/// An envelope's place at its source's rate-limit step: the rate decision
/// of a source's envelopes is taken in the order its queue delivered them,
/// however many are handled at once. Released by [`Turn::pass`] or on drop
/// (an envelope refused before the rate step gives its place up).
pub(crate) struct Turn {
    gate: Arc<Turnstile>,
    seq: u64,
    released: std::sync::atomic::AtomicBool,
}

impl Turn {
    /// Resolves when every earlier envelope of the source has passed.
    pub(crate) async fn wait(&self) {
        let mut rx = self.gate.tx.subscribe();
        let _ = rx.wait_for(|passed| *passed >= self.seq).await;
    }

    /// Passes the rate step, letting the next envelope of the source take it.
    pub(crate) fn pass(&self) {
        if self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let mut t = self.gate.turns.lock().unwrap_or_else(|e| e.into_inner());
        t.early.insert(self.seq);
        loop {
            let next = t.passed;
            if !t.early.remove(&next) {
                break;
            }
            t.passed += 1;
        }
        let passed = t.passed;
        drop(t);
        self.gate.tx.send_replace(passed);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.pass();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(own) = self.own.take() {
            own.release(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn msg(kind: &str, mid: &str, reference: Option<&str>) -> Message {
        let mut m = Message {
            routing_key: format!("{kind}.000.00.31.H41"),
            message_id: Some(mid.into()),
            ..Message::default()
        };
        if let Some(r) = reference {
            m.set_header("lgsp-ref", r);
        }
        m
    }

    async fn is_ready(t: &mut Ticket) -> Option<bool> {
        tokio::time::timeout(Duration::from_millis(50), t.ready())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_recall_waits_for_its_envelope() {
        let s = Sequencer::new();
        let mut env = s.admit(&msg("envelope", "E1", None));
        let mut recall = s.admit(&msg("status", "S1", Some("E1")));
        let mut other = s.admit(&msg("envelope", "E2", None));
        assert_eq!(is_ready(&mut env).await, Some(true));
        assert_eq!(
            is_ready(&mut other).await,
            Some(true),
            "unrelated work flows"
        );
        assert_eq!(is_ready(&mut recall).await, None, "waits for E1");
        env.finish(true);
        assert_eq!(is_ready(&mut recall).await, Some(true));
        other.finish(true);
        assert_eq!(s.inflight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_after_a_finished_envelope_does_not_wait() {
        let s = Sequencer::new();
        s.admit(&msg("envelope", "E1", None)).finish(true);
        let mut st = s.admit(&msg("status", "S1", Some("E1")));
        assert_eq!(is_ready(&mut st).await, Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_envelope_sends_its_dependants_back() {
        let s = Sequencer::new();
        let env = s.admit(&msg("envelope", "E1", None));
        let mut recall = s.admit(&msg("status", "S1", Some("E1")));
        drop(env);
        assert_eq!(is_ready(&mut recall).await, Some(false));
        let env = s.admit(&msg("envelope", "E1", None));
        let mut recall = s.admit(&msg("status", "S1", Some("E1")));
        env.finish(false);
        assert_eq!(is_ready(&mut recall).await, Some(false));
        assert_eq!(s.inflight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_of_one_envelope_run_one_after_another() {
        let s = Sequencer::new();
        let first = s.admit(&msg("envelope", "E1", None));
        let mut second = s.admit(&msg("envelope", "E1", None));
        let mut third = s.admit(&msg("envelope", "E1", None));
        assert_eq!(is_ready(&mut second).await, None);
        first.finish(true);
        assert_eq!(is_ready(&mut second).await, Some(true));
        assert_eq!(is_ready(&mut third).await, None, "waits for the second");
        second.finish(true);
        assert_eq!(is_ready(&mut third).await, Some(true));
        third.finish(true);
        assert_eq!(s.inflight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_and_unknown_kinds_never_wait() {
        let s = Sequencer::new();
        let _env = s.admit(&msg("envelope", "E1", None));
        let mut hb = s.admit(&msg("presence", "E1", Some("E1")));
        assert_eq!(is_ready(&mut hb).await, Some(true));
        assert_eq!(s.inflight(), 1);
    }

    async fn waits_turn(t: &Ticket) -> bool {
        tokio::time::timeout(Duration::from_millis(50), t.turn().unwrap().wait())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_passes_the_rate_step_in_delivery_order() {
        let s = Sequencer::new();
        let src = AgencyCode::parse("000.00.31.H41").unwrap();
        let a = s.admit_from(&src, &msg("envelope", "E1", None));
        let b = s.admit_from(&src, &msg("envelope", "E2", None));
        let c = s.admit_from(&src, &msg("envelope", "E3", None));
        let status = s.admit_from(&src, &msg("status", "S1", Some("E9")));
        assert!(status.turn().is_none(), "only envelopes take turns");
        assert!(!waits_turn(&c).await, "the third waits for the first two");
        assert!(!waits_turn(&b).await);
        assert!(waits_turn(&a).await);
        a.turn().unwrap().pass();
        assert!(waits_turn(&b).await);
        assert!(!waits_turn(&c).await);
        // The second gives its place up (refused before the rate step).
        drop(b);
        assert!(waits_turn(&c).await);
    }
}
