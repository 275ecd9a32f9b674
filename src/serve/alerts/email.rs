//! Alert notifications by email, through the SMTP relay `alerts.toml`
//! names (lettre): plain SMTP on a trusted network, or STARTTLS, with a
//! login when `username` is set (the password from `TRUC_SMTP_PASSWORD`).
//!
//! Invariants: one message per notification to every recipient; it has
//! [`super::webhook::TIMEOUT`] to be accepted by the relay.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::core::alert_policy::Email;

/// Sends `subject` and `body` as `e` says.
pub(super) async fn send(e: &Email, subject: &str, body: &str) -> Result<(), String> {
    let (host, port) = e
        .smtp
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("{:?} is not host:port", e.smtp))?;
    let mut b = Message::builder()
        .from(e.from.parse().map_err(|err| format!("from: {err}"))?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        b = b.to(to.parse().map_err(|err| format!("to {to}: {err}"))?);
    }
    let message = b.body(body.to_owned()).map_err(|err| err.to_string())?;
    let mut t = if e.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|err| err.to_string())?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    }
    .port(port)
    .timeout(Some(super::webhook::TIMEOUT));
    if let Some(user) = &e.username {
        let password = std::env::var("TRUC_SMTP_PASSWORD").unwrap_or_default();
        t = t.credentials(Credentials::new(user.clone(), password));
    }
    t.build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}
