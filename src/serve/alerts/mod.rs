//! The alerting task: every `evaluate_every`, the leader instance looks at
//! the hub ([`observe`]), steps the alert state machine
//! ([`crate::core::alerting`]), keeps the open alerts in the store
//! ([`crate::state::alerts`]) and sends each notification to the webhook
//! and by email ([`webhook`], [`email`]), logging it either way.
//!
//! Invariants: only the instance holding the leader lease evaluates, and a
//! new leader carries on from the open alerts in the store, so an alert is
//! announced once across instances (a leader that dies between sending
//! and keeping may announce it once more); the store's open alerts are made
//! the leader's own at every evaluation, so one whose keeping failed (the
//! store was full) is kept once the store writes again, and an instance
//! leading again carries its own open alerts the store never kept, so each
//! is still resolved; a notification that fails to
//! send is logged and counted, never retried in a loop; the loop
//! `select!`s on shutdown.

mod email;
mod observe;
mod webhook;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::alarm::{Alarm, Say};
use crate::core::alert_policy::AlertsPolicy;
use crate::core::alerting::{Alert, Alerting, Condition, Kind, Notice};
use crate::core::time::now_ms;
use crate::operator::Hub;
use crate::state::alerts::AlertBook;

/// How long resolved alerts are kept.
const HISTORY_MS: i64 = 7 * 86_400_000;

/// The text of notice `n`, Vietnamese first.
fn text(n: &Notice) -> (String, String) {
    let (vi, en) = match n.kind {
        Kind::Firing => ("CẢNH BÁO", "ALERT"),
        Kind::Repeat => ("VẪN CÒN", "STILL FIRING"),
        Kind::Resolved => ("ĐÃ HẾT", "RESOLVED"),
    };
    let a = &n.alert;
    let subject = format!("[truc] {vi} / {en}: {} {}", a.rule.as_str(), a.subject);
    let body = format!(
        "{vi}: {}\n{en}: {}\n\nrule: {}\nsubject: {}\nkey: {}",
        a.text_vi,
        a.text_en,
        a.rule.as_str(),
        a.subject,
        a.key
    );
    (subject, body)
}

async fn send(policy: &AlertsPolicy, n: &Notice) {
    let (subject, body) = text(n);
    let a = &n.alert;
    match n.kind {
        Kind::Resolved => {
            tracing::info!(alert = %a.key, notice = n.kind.as_str(), "{}", a.text_en)
        }
        Kind::Firing | Kind::Repeat => {
            tracing::warn!(alert = %a.key, notice = n.kind.as_str(), "{}", a.text_en)
        }
    }
    if let Some(url) = &policy.webhook {
        let outcome = webhook::post(url, &format!("{subject}\n{body}")).await;
        if let Err(e) = &outcome {
            tracing::warn!(alert = %a.key, error = %e, "alert webhook failed");
        }
        crate::core::metrics::alert_notification("webhook", outcome.is_ok());
    }
    if let Some(e) = &policy.email {
        let outcome = email::send(e, &subject, &body).await;
        if let Err(err) = &outcome {
            tracing::warn!(alert = %a.key, error = %err, "alert email failed");
        }
        crate::core::metrics::alert_notification("email", outcome.is_ok());
    }
}

/// Runs until `shutdown`, with the policy in `hub`.
pub(crate) async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let book = AlertBook::new(hub.store.clone());
    let mut state: Option<Alerting> = None;
    // This instance's open alerts when it last stopped leading: carried into
    // its next term for those the store never kept (see AlertBook::resume).
    let mut before: Vec<Alert> = Vec::new();
    let mut observer = observe::Observer::default();
    let unkept = Alarm::new();
    loop {
        let policy = hub.alerts_policy();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(policy.evaluate_every) => {}
        }
        if !hub.leads() {
            if let Some(s) = state.take() {
                before = s.open().cloned().collect();
            }
            observer = observe::Observer::default();
            continue;
        }
        let alerting = match &mut state {
            Some(s) => s,
            None => {
                let b = book.clone();
                let mine = before.clone();
                match tokio::task::spawn_blocking(move || b.resume(mine)).await {
                    Ok(Ok(open)) => {
                        before.clear();
                        state.insert(Alerting::resume(open))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "open alerts not read; trying again");
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let now = now_ms();
        let seen = observer.observe(&hub, &policy.rules, now).await;
        let mut firing = seen.firing;
        // What could not be read stays as it was.
        for a in alerting.open() {
            if seen.unknown.contains(&a.rule) && !firing.iter().any(|c| c.key() == a.key) {
                firing.push(Condition {
                    rule: a.rule,
                    subject: a.subject.clone(),
                    text_vi: a.text_vi.clone(),
                    text_en: a.text_en.clone(),
                });
            }
        }
        let step = alerting.step(
            now,
            firing,
            policy.repeat_after.as_millis() as i64,
            policy.max_per_hour,
        );
        crate::core::metrics::alerts_open(alerting.open().count(), alerting.suppressed());
        let b = book.clone();
        let keep = step.clone();
        let open: Vec<Alert> = alerting.open().cloned().collect();
        let kept = tokio::task::spawn_blocking(move || {
            b.keep(&keep, &open)?;
            b.sweep(now - HISTORY_MS)
        })
        .await;
        match kept {
            Ok(Err(e)) => match unkept.raise(std::time::Instant::now()) {
                Say::Started => {
                    tracing::warn!(error = %e, "alerts not kept in the store; notifications still go out")
                }
                Say::Reminder {
                    suppressed,
                    lasting,
                } => {
                    tracing::warn!(error = %e, suppressed, lasting_s = lasting.as_secs(), "alerts still not kept in the store")
                }
                Say::Quiet => {}
            },
            Ok(Ok(_)) => {
                if let Some(lasted) = unkept.clear(std::time::Instant::now()) {
                    tracing::info!(
                        lasted_s = lasted.as_secs(),
                        "alerts kept in the store again"
                    );
                }
            }
            Err(_) => {}
        }
        for n in &step.notices {
            send(&policy, n).await;
        }
    }
}
