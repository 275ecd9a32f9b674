//! Every metric truc emits, each from exactly one function here.
//!
//! Names are Prometheus-style with the `truc_` prefix; the admin API serves
//! them on `/metrics`.

use std::time::Duration;

use crate::reason::Reason;

/// An envelope was accepted.
pub fn envelope_accepted(priority: u8) {
    metrics::counter!("truc_envelopes_accepted_total", "priority" => priority.to_string())
        .increment(1);
}

/// A message was refused (with or without a notice).
pub fn message_rejected(reason: Reason) {
    metrics::counter!("truc_messages_rejected_total", "reason" => reason.as_str()).increment(1);
}

/// A delivery was published and confirmed.
pub fn delivery_published() {
    metrics::counter!("truc_deliveries_published_total").increment(1);
}

/// A destination was bounced.
pub fn bounced(reason: Reason) {
    metrics::counter!("truc_bounced_total", "reason" => reason.as_str()).increment(1);
}

/// A duplicate envelope was absorbed.
pub fn duplicate() {
    metrics::counter!("truc_duplicates_total").increment(1);
}

/// A status message was relayed.
pub fn status_relayed(status: &str) {
    metrics::counter!("truc_status_relayed_total", "status" => status.to_owned()).increment(1);
}

/// A presence heartbeat was taken.
pub fn heartbeat(online: bool) {
    metrics::counter!("truc_heartbeats_total", "state" => if online { "online" } else { "offline" }).increment(1);
}

/// Time from ingress delivery to ack.
pub fn ingress_latency(d: Duration) {
    metrics::histogram!("truc_ingress_seconds").record(d.as_secs_f64());
}

/// Time for one publish to be confirmed.
pub fn publish_confirm_latency(d: Duration) {
    metrics::histogram!("truc_publish_confirm_seconds").record(d.as_secs_f64());
}

/// A broker (re)connection happened.
pub fn broker_connected() {
    metrics::counter!("truc_broker_connections_total").increment(1);
}

/// Registered agencies.
pub fn agencies(n: usize) {
    metrics::gauge!("truc_agencies").set(n as f64);
}

/// Bytes of the sled store on disk.
pub fn store_bytes(n: u64) {
    metrics::gauge!("truc_store_bytes").set(n as f64);
}

/// A retry of a rejected delivery was scheduled.
pub fn retry_scheduled() {
    metrics::counter!("truc_retries_scheduled_total").increment(1);
}

/// Deadlines that passed before delivery were swept.
pub fn deadlines_swept(n: usize) {
    metrics::counter!("truc_deadlines_swept_total").increment(n as u64);
}

/// A delay warning was sent to a source.
pub fn delay_warning() {
    metrics::counter!("truc_delay_warnings_total").increment(1);
}

/// Agencies online now.
pub fn agencies_online(n: usize) {
    metrics::gauge!("truc_agencies_online").set(n as f64);
}

/// An agency's presence changed (`to`: online, offline, disabled).
pub fn presence_transition(to: &'static str) {
    metrics::counter!("truc_presence_transitions_total", "to" => to).increment(1);
}

/// One presence poll of every inbox: how long it took and how many queues it asked about.
pub fn presence_poll(d: Duration, queues: usize) {
    metrics::histogram!("truc_presence_poll_seconds").record(d.as_secs_f64());
    metrics::gauge!("truc_presence_polled_queues").set(queues as f64);
}
