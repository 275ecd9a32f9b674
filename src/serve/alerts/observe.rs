//! What the alert rules look at, read from the running hub: the undelivered
//! queue, every inbox's depth, agencies' presence, this instance's broker
//! link, the store's health, refusals in the audit log, keys in use and the
//! hub's TLS certificates.
//!
//! Invariants: a rule whose facts could not be read this time is reported
//! as unknown, never as clear (its open alerts stay open); refusals are
//! counted from the shared audit log, so they cover every instance;
//! texts name codes and counts, never message content.

use std::collections::VecDeque;
use std::path::Path;

use crate::core::alert_policy::Rules;
use crate::core::alerting::{Condition, Rule};
use crate::core::time::parse_rfc3339;
use crate::operator::{agency, presence, queues, Hub};

/// Facts found firing this time, and the rules that could not be read.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub(super) firing: Vec<Condition>,
    pub(super) unknown: Vec<Rule>,
}

/// What the rules remember between evaluations.
#[derive(Debug, Default)]
pub(super) struct Observer {
    link_down_since: Option<i64>,
    /// Refusals seen: (when, how many), oldest first.
    refusals: VecDeque<(i64, u64)>,
    /// The newest audit entry read.
    audit_seq: Option<u64>,
}

fn cond(rule: Rule, subject: impl Into<String>, vi: String, en: String) -> Condition {
    Condition {
        rule,
        subject: subject.into(),
        text_vi: vi,
        text_en: en,
    }
}

/// The expiry (ms) of the first certificate in PEM file `path`.
pub(super) fn certificate_expiry(path: &Path) -> Result<i64, String> {
    use x509_cert::der::Decode;
    let certs = crate::core::pem::read_certificates(path)?;
    let first = certs.first().ok_or("no certificate in the file")?;
    let cert = x509_cert::Certificate::from_der(first.as_ref()).map_err(|e| e.to_string())?;
    let t = cert.tbs_certificate.validity.not_after.to_unix_duration();
    Ok(t.as_millis() as i64)
}

impl Observer {
    /// Looks at `hub` for the rules `rules` turns on, at `now`.
    pub(super) async fn observe(&mut self, hub: &Hub, rules: &Rules, now: i64) -> Observed {
        let mut o = Observed::default();
        let zone = hub.config.zone();
        let when = |ms: i64| {
            let (d, t, _) = zone.readable(ms);
            format!("{d} {t}")
        };

        let connected = hub.link.borrow().as_ref().is_some_and(|l| l.is_connected());
        self.link_down_since = match (connected, self.link_down_since) {
            (true, _) => None,
            (false, None) => Some(now),
            (false, since) => since,
        };
        if let (Some(after), Some(since)) = (rules.broker_disconnected, self.link_down_since) {
            if now - since >= after.as_millis() as i64 {
                o.firing.push(cond(
                    Rule::BrokerDisconnected,
                    hub.instance_id.clone(),
                    format!(
                        "Trục (phiên bản {}) mất kết nối với RabbitMQ từ {}",
                        hub.instance_id,
                        when(since)
                    ),
                    format!(
                        "The hub (instance {}) has been disconnected from RabbitMQ since {}",
                        hub.instance_id,
                        when(since)
                    ),
                ));
            }
        }

        if rules.store {
            if let Some(why) = hub.store.fault() {
                o.firing.push(cond(
                    Rule::Store,
                    "store",
                    format!("Kho dữ liệu không ghi được ({why}); trục không nhận văn bản mới cho đến khi ghi lại được"),
                    format!("The store refuses writes ({why}); nothing new is accepted until it takes them again"),
                ));
            }
        }

        if rules.undelivered {
            match queues::link(hub) {
                Ok(link) => {
                    let got = queues::infos(link, vec![hub.topology.name("undelivered")]).await;
                    match got.first().cloned().flatten() {
                        Some(i) if i.messages > 0 => o.firing.push(cond(
                            Rule::Undelivered,
                            "undelivered",
                            format!("{} bản chuyển không gửi được đang nằm trong hàng đợi undelivered", i.messages),
                            format!("{} deliveries the hub gave up on are parked in the undelivered queue", i.messages),
                        )),
                        Some(_) => {}
                        None => o.unknown.push(Rule::Undelivered),
                    }
                }
                Err(_) => o.unknown.push(Rule::Undelivered),
            }
        }

        if let Some(max) = rules.inbox_depth {
            match queues::list(hub).await {
                Ok(rows) => {
                    for r in rows {
                        match r.messages {
                            Some(n) if u64::from(n) > max => o.firing.push(cond(
                                Rule::InboxDepth,
                                r.code.clone(),
                                format!(
                                    "Hộp thư của {} ({}) có {n} văn bản chờ (ngưỡng {max})",
                                    r.code, r.name
                                ),
                                format!(
                                    "The inbox of {} ({}) holds {n} messages (threshold {max})",
                                    r.code, r.name
                                ),
                            )),
                            Some(_) => {}
                            None => o.unknown.push(Rule::InboxDepth),
                        }
                    }
                }
                Err(_) => o.unknown.push(Rule::InboxDepth),
            }
        }

        if let Some(after) = rules.agency_offline {
            match presence::list(hub) {
                Ok(rows) => {
                    for p in rows.iter().filter(|p| p.state == "offline") {
                        let since = p.since.as_deref().and_then(|s| parse_rfc3339(s).ok());
                        if let Some(since) = since.filter(|s| now - s >= after.as_millis() as i64) {
                            o.firing.push(cond(
                                Rule::AgencyOffline,
                                p.code.clone(),
                                format!(
                                    "Đơn vị {} ({}) ngoại tuyến từ {}",
                                    p.code,
                                    p.name,
                                    when(since)
                                ),
                                format!(
                                    "Agency {} ({}) has been offline since {}",
                                    p.code,
                                    p.name,
                                    when(since)
                                ),
                            ));
                        }
                    }
                }
                Err(_) => o.unknown.push(Rule::AgencyOffline),
            }
        }

        if let Some((max, window)) = rules.refusals {
            match self.refusals(hub, now, window.as_millis() as i64) {
                Ok(n) if n > max => o.firing.push(cond(
                    Rule::Refusals,
                    "hub",
                    format!("{n} văn bản bị từ chối hoặc cách ly trong {} (ngưỡng {max}), kể cả lệch đồng hồ", humantime::format_duration(window)),
                    format!("{n} messages refused or quarantined within {} (threshold {max}), clock skew included", humantime::format_duration(window)),
                )),
                Ok(_) => {}
                Err(_) => o.unknown.push(Rule::Refusals),
            }
        }

        if let Some(within) = rules.expiry {
            let limit = now + within.as_millis() as i64;
            for a in agency::list(hub) {
                for k in a.access_keys.iter().filter(|k| k.last_used) {
                    let Some(at) = k.expires_at.as_deref().and_then(|t| parse_rfc3339(t).ok())
                    else {
                        continue;
                    };
                    if at <= limit {
                        o.firing.push(cond(
                            Rule::Expiry,
                            format!("key:{}", a.code),
                            format!("Đơn vị {} vẫn dùng khóa {} hết hạn lúc {}; đơn vị cần chuyển sang khóa mới", a.code, k.access_key, when(at)),
                            format!("Agency {} still uses key {}, which expires at {}; it must switch to its new key", a.code, k.access_key, when(at)),
                        ));
                    }
                }
            }
            let certs = [
                ("admin", hub.config.admin_tls_cert.as_ref()),
                ("gateway", hub.config.gateway_tls_cert.as_ref()),
            ];
            for (what, path) in certs {
                let Some(path) = path else { continue };
                match certificate_expiry(path) {
                    Ok(at) if at <= limit => o.firing.push(cond(
                        Rule::Expiry,
                        format!("cert:{what}"),
                        format!(
                            "Chứng thư TLS {} ({}) hết hạn lúc {}",
                            what,
                            path.display(),
                            when(at)
                        ),
                        format!(
                            "The {} TLS certificate ({}) expires at {}",
                            what,
                            path.display(),
                            when(at)
                        ),
                    )),
                    Ok(_) => {}
                    Err(_) => o.unknown.push(Rule::Expiry),
                }
            }
        }
        o
    }

    /// Refusals recorded in the audit log within `window_ms` of `now`.
    fn refusals(&mut self, hub: &Hub, now: i64, window_ms: i64) -> Result<u64, String> {
        let audit = hub.router.audit();
        let entries = audit
            .tail(crate::operator::audit::MAX_TAIL, self.audit_seq)
            .map_err(|e| e.to_string())?;
        for e in &entries {
            self.audit_seq = Some(self.audit_seq.map_or(e.seq, |s| s.max(e.seq)));
            let n = match e.kind.as_str() {
                "rejected" | "quarantined" => 1,
                "quarantine-summary" => e.fields["count"].as_u64().unwrap_or(0),
                _ => continue,
            };
            if let Ok(at) = parse_rfc3339(&e.at) {
                self.refusals.push_back((at, n));
            }
        }
        while self
            .refusals
            .front()
            .is_some_and(|(at, _)| now - at > window_ms)
        {
            self.refusals.pop_front();
        }
        Ok(self.refusals.iter().map(|(_, n)| n).sum())
    }
}

#[cfg(test)]
mod tests {
    /// A self-signed certificate: `openssl x509 -enddate` says
    /// `notAfter=Dec 31 20:48:05 2026 GMT`.
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfjCCASOgAwIBAgIUPfzv+Mv0E4O7JX6QepSOD5fpEXkwCgYIKoZIzj0EAwIw\nFDESMBAGA1UEAwwJdHJ1Yy10ZXN0MB4XDTI2MTIwMTIwNDgwNVoXDTI2MTIzMTIw\nNDgwNVowFDESMBAGA1UEAwwJdHJ1Yy10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D\nAQcDQgAE1jvfBpN9NkU75PcA5bSKXJah8eKqiluSm5vdVll+ggl8LnZsMto10ZIU\nFYj9/+lGdhJZUx+zDW+5yPuPkFszraNTMFEwHQYDVR0OBBYEFGQY61Jx0lAhzg30\nZBAOzmTP37SCMB8GA1UdIwQYMBaAFGQY61Jx0lAhzg30ZBAOzmTP37SCMA8GA1Ud\nEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAO5Xmb6n9+sYs42B5Hy0izcK\nfvS10h33mXvHz41N02JFAiEAk9Ky70gFDOd68SCqiek8Itb2jKPFarQeIUfzLvSn\nur4=\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_certificates_expiry_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, PEM).unwrap();
        assert_eq!(super::certificate_expiry(&path).unwrap(), 1_798_750_085_000);
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(super::certificate_expiry(&path).is_err());
    }
}
