//! Every metric truc emits, each from exactly one function here.
//!
//! Names are Prometheus-style with the `truc_` prefix; the admin API serves
//! them on `/metrics`.

use std::time::Duration;

use crate::core::reason::Reason;

/// An envelope was accepted.
pub fn envelope_accepted(priority: u8) {
    metrics::counter!("truc_envelopes_accepted_total", "priority" => priority.to_string())
        .increment(1);
}

/// Unauthenticated input was quarantined (no notice, no per-message audit).
pub fn quarantined(reason: Reason) {
    metrics::counter!("truc_quarantined_total", "reason" => reason.as_str()).increment(1);
}

/// A message was refused (with or without a notice).
pub fn message_rejected(reason: Reason) {
    metrics::counter!("truc_messages_rejected_total", "reason" => reason.as_str()).increment(1);
}

/// A delivery was published and confirmed.
pub fn delivery_published() {
    metrics::counter!("truc_deliveries_published_total").increment(1);
}

/// A delivery was held for a retry because its inbox was unavailable (its
/// broker node is down).
pub fn delivery_held_unavailable() {
    metrics::counter!("truc_deliveries_held_unavailable_total").increment(1);
}

/// A destination was bounced.
pub fn bounced(reason: Reason) {
    metrics::counter!("truc_bounced_total", "reason" => reason.as_str()).increment(1);
}

/// A held or retried copy came back and its envelope record was missing
/// (store lost): `rebuilt` from the copy, or `parked` in `undelivered`.
pub fn record_missing(outcome: &'static str) {
    metrics::counter!("truc_held_without_record_total", "outcome" => outcome).increment(1);
}

/// A duplicate envelope was absorbed.
pub fn duplicate() {
    metrics::counter!("truc_duplicates_total").increment(1);
}

/// An upload space was deleted (`why`: delivered, orphaned, unused).
pub fn space_deleted(why: &'static str) {
    metrics::counter!("truc_spaces_deleted_total", "why" => why).increment(1);
}

/// Upload spaces held, and the bytes of the documents in them (set by the
/// sweep).
pub fn spaces_held(count: usize, bytes: u64) {
    metrics::gauge!("truc_spaces").set(count as f64);
    metrics::gauge!("truc_spaces_bytes").set(bytes as f64);
}

/// Bytes received into upload spaces (chunks and large gateway bodies).
pub fn space_bytes_in(n: u64) {
    metrics::counter!("truc_space_bytes_in_total").increment(n);
}

/// Bytes of upload-space content sent to destinations.
pub fn space_bytes_out(n: u64) {
    metrics::counter!("truc_space_bytes_out_total").increment(n);
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

/// Whether the store can write (1) or its last flush failed (0).
pub fn store_writable(ok: bool) {
    metrics::gauge!("truc_store_writable").set(if ok { 1.0 } else { 0.0 });
}

/// Whether `/healthz` would answer `ok` (1) or `unhealthy` (0), per check:
/// `check` is `all` for the overall state, else `store`, `broker` or `ingress`.
pub fn healthy(check: &'static str, ok: bool) {
    metrics::gauge!("truc_healthy", "check" => check).set(if ok { 1.0 } else { 0.0 });
}

/// Audit entries waiting to be written again after a store failure.
pub fn audit_backlog(n: usize) {
    metrics::gauge!("truc_audit_backlog").set(n as f64);
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

/// A destination confirmed receipt (status `01`); `latency` is accepted → delivered.
pub fn delivered(priority: u8, latency: Duration) {
    metrics::counter!("truc_envelopes_delivered_total", "priority" => priority.to_string())
        .increment(1);
    metrics::histogram!("truc_delivery_latency_seconds", "priority" => priority.to_string())
        .record(latency.as_secs_f64());
}

/// Depth of one agency's inbox (sampled).
pub fn inbox_depth(code: &str, messages: u32) {
    metrics::gauge!("truc_inbox_messages", "agency" => code.to_owned()).set(f64::from(messages));
}

/// Consumers on one agency's inbox (sampled).
pub fn inbox_consumers(code: &str, consumers: u32) {
    metrics::gauge!("truc_inbox_consumers", "agency" => code.to_owned()).set(f64::from(consumers));
}

/// Depth of the dead-letter and rejected queues (sampled).
pub fn dead_depth(queue: &'static str, messages: u32) {
    metrics::gauge!("truc_dead_messages", "queue" => queue).set(f64::from(messages));
}

/// An audit entry could not be written.
pub fn audit_failure() {
    audit_failures(1);
}

/// `n` audit entries could not be written.
pub fn audit_failures(n: usize) {
    metrics::counter!("truc_audit_failures_total").increment(n as u64);
}

/// Audit entries appended since start.
pub fn audit_entries(n: usize) {
    metrics::gauge!("truc_audit_entries").set(n as f64);
}

/// Records removed by a retention sweep.
pub fn swept(what: &'static str, n: usize) {
    metrics::counter!("truc_retention_swept_total", "what" => what).increment(n as u64);
}

/// An operator action on queues (purge, retry, drop).
pub fn operator_action(action: &'static str, n: usize) {
    metrics::counter!("truc_operator_messages_total", "action" => action).increment(n as u64);
}

/// An alert notification was sent (`ok`) or failed, on `channel`
/// (`webhook`, `email`).
pub fn alert_notification(channel: &'static str, ok: bool) {
    let outcome = if ok { "sent" } else { "failed" };
    metrics::counter!("truc_alert_notifications_total", "channel" => channel, "outcome" => outcome)
        .increment(1);
}

/// Alerts open now, and notifications the hourly budget has held back
/// since this instance began leading (on the leader).
pub fn alerts_open(n: usize, held: u64) {
    metrics::gauge!("truc_alerts_open").set(n as f64);
    metrics::gauge!("truc_alert_notifications_held").set(held as f64);
}

/// A console login succeeded (`ok`) or was refused (wrong password, or a
/// locked account name).
pub fn console_login(ok: bool) {
    let outcome = if ok { "ok" } else { "refused" };
    metrics::counter!("truc_console_logins_total", "outcome" => outcome).increment(1);
}

/// A frame from the broker that lapin could not have parsed was rewritten
/// (`what`: `properties` or `routing-key`).
pub fn malformed_frame(what: &'static str) {
    metrics::counter!("truc_malformed_frames_total", "what" => what).increment(1);
}

/// This instance and its role (`leader` or `follower`): the series of the
/// role it is in is 1, that of the other role 0, so a query on
/// `truc_instance_info == 1` lists every instance once with its role.
pub fn instance_info(instance: &str, role: &'static str) {
    for r in ["leader", "follower"] {
        metrics::gauge!("truc_instance_info", "instance" => instance.to_owned(), "role" => r)
            .set(if r == role { 1.0 } else { 0.0 });
    }
}

/// Whether this instance holds the leader lease (1) or not (0).
pub fn leader(is_leader: bool) {
    metrics::gauge!("truc_leader").set(if is_leader { 1.0 } else { 0.0 });
}

/// One call to the HTTPS gateway: its route (the path pattern), answer
/// status and how long it took to answer (for a stream, until its head).
pub fn gateway_request(route: &str, status: u16, d: Duration) {
    metrics::counter!("truc_gateway_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("truc_gateway_request_seconds", "route" => route.to_owned())
        .record(d.as_secs_f64());
}

/// A gateway call was refused for being over its agency's gateway rate.
pub fn gateway_rate_limited() {
    metrics::counter!("truc_gateway_rate_limited_total").increment(1);
}

/// Mailboxes (agencies receiving over HTTPS) open on this instance.
pub fn gateway_mailboxes(n: usize) {
    metrics::gauge!("truc_gateway_mailboxes").set(n as f64);
}

#[cfg(test)]
mod tests {
    /// Every metric the Grafana dashboard queries is emitted here.
    #[test]
    fn dashboard_uses_only_emitted_metrics() {
        assert!(emitted(include_str!("../../ops/grafana-truc.json")) > 15);
    }

    /// Every metric the Prometheus alerting rules use is emitted here.
    #[test]
    fn prometheus_alert_rules_use_only_emitted_metrics() {
        let rules = include_str!("../../ops/prometheus-alerts.yml");
        assert!(emitted(rules) >= 9);
        // The park queue's label is its short name.
        assert!(rules.contains("truc_dead_messages{queue=\"undelivered\"}"));
        assert!(include_str!("../operator/queues.rs")
            .contains("[\"undelivered\", \"dead\", \"rejected\"]"));
    }

    /// Asserts each `truc_…` metric `text` names is emitted in this file;
    /// how many it names.
    fn emitted(text: &str) -> usize {
        let dash = text;
        let src = include_str!("metrics.rs");
        let mut seen = 0;
        for (i, _) in dash.match_indices("truc_") {
            let name: String = dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let base = name
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .trim_end_matches("_bucket");
            if base == "truc_" || base.starts_with("truc_lgsp") || base == "truc_overview" {
                continue;
            }
            assert!(
                src.contains(&format!("\"{base}\"")),
                "{base} is not emitted"
            );
            seen += 1;
        }
        seen
    }
}
