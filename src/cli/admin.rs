//! The typed admin client: one method per admin API call, over
//! [`crate::cli::http`], each deserializing the response into its
//! [`crate::api::types`] type.
//!
//! Invariants: the token is resolved before any call (exit 5 without one);
//! statuses map to exit codes in one place ([`Admin::call_bytes`]): 401 → 5,
//! 502/503 → 4, any other failure → 3, an unreadable body → 1.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::types::{
    AccountView, AddAccount, AlertsView, IssueToken, SetPassword, TokenIssued, WhoAmI,
};
use crate::api::types::{
    AddAgency, Added, AgencyView, AuditEntry, BrokerIssued, DeadBody, DeadFilter, DeadOutcome,
    EnvelopeQuery, EnvelopeView, ErrorBody, FullReport, HistoryQuery, Import, InstanceView, Issued,
    ListQuery, MessageView, PresenceHistory, PresenceView, PurgeReport, QueueRow,
    RabbitDefinitions, RemoveQuery, Removed, ReportQuery, Rotate, Rotated, Shape, StoreStats,
    VerifyReport,
};
use crate::cli::CliError;
use crate::core::code::AgencyCode;
use crate::core::config::Config;
use crate::core::text::percent_encoded;

/// `?k=v&…` of the non-null fields of a JSON object, percent-encoded.
pub fn query_string(v: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            let t = match val {
                Value::Null => continue,
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            parts.push(format!("{k}={}", percent_encoded(&t)));
        }
    }
    parts.join("&")
}

/// `s` percent-encoded for one path segment (an account name is checked
/// by the hub; this keeps whatever was typed inside its segment).
fn path_part(s: &str) -> String {
    percent_encoded(s)
}

/// `path?query` for the typed query `q`.
fn with_query<Q: Serialize>(path: &str, q: &Q) -> String {
    let qs = query_string(&serde_json::to_value(q).unwrap_or_default());
    if qs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{qs}")
    }
}

/// A client of one hub's admin API.
pub struct Admin {
    addr: String,
    token: String,
    /// HTTPS settings when the admin API is served over TLS.
    tls: Option<crate::cli::tls::AdminClientTls>,
}

impl Admin {
    /// The client of the hub `cfg` names.
    pub fn new(cfg: &Config) -> Result<Self, CliError> {
        let token = cfg.resolve_admin_token(false).map_err(|e| {
            CliError::new(
                5,
                format!(
                    "no admin token: set TRUC_ADMIN_TOKEN or run where {} is readable ({e})",
                    cfg.token_path().display()
                ),
            )
        })?;
        let tls = crate::cli::tls::admin_client(cfg).map_err(|e| CliError::new(2, e))?;
        Ok(Self {
            addr: cfg.admin_addr.clone(),
            token,
            tls,
        })
    }

    /// One call: `method path` with an optional JSON body, answered by a `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let body = self.call_bytes(method, path, body).await?;
        serde_json::from_slice(&body)
            .map_err(|e| CliError::new(1, format!("unexpected answer to {method} {path}: {e}")))
    }

    /// One call answered by bytes (a 2xx body as it came).
    async fn call_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, CliError> {
        let resp = crate::cli::http::request_tls(
            self.tls.as_ref(),
            &self.addr,
            method,
            path,
            &self.token,
            body.as_deref(),
        )
        .await
        .map_err(|e| CliError::new(4, e.to_string()))?;
        let message = || {
            serde_json::from_slice::<ErrorBody>(&resp.body)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("HTTP {}", resp.status))
        };
        match resp.status {
            200..=299 => Ok(resp.body),
            401 => Err(CliError::new(5, "the hub refused the admin token")),
            502 | 503 => Err(CliError::new(4, message())),
            _ => Err(CliError::new(3, message())),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call("GET", path, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(body).unwrap_or_default();
        self.call("POST", path, Some(body)).await
    }

    /// `POST /v1/accounts`.
    pub async fn add_account(&self, body: &AddAccount) -> Result<AccountView, CliError> {
        self.post("/v1/accounts", body).await
    }

    /// `GET /v1/accounts`.
    pub async fn accounts(&self) -> Result<Vec<AccountView>, CliError> {
        self.get("/v1/accounts").await
    }

    /// `POST /v1/accounts/{name}/enable|disable`.
    pub async fn set_account_enabled(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<AccountView, CliError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.call(
            "POST",
            &format!("/v1/accounts/{}/{verb}", path_part(name)),
            None,
        )
        .await
    }

    /// `POST /v1/accounts/{name}/password`.
    pub async fn set_account_password(
        &self,
        name: &str,
        body: &SetPassword,
    ) -> Result<AccountView, CliError> {
        self.post(&format!("/v1/accounts/{}/password", path_part(name)), body)
            .await
    }

    /// `POST /v1/accounts/{name}/tokens`.
    pub async fn issue_token(
        &self,
        name: &str,
        body: &IssueToken,
    ) -> Result<TokenIssued, CliError> {
        self.post(&format!("/v1/accounts/{}/tokens", path_part(name)), body)
            .await
    }

    /// `GET /v1/alerts`.
    pub async fn alerts(&self) -> Result<AlertsView, CliError> {
        self.get("/v1/alerts").await
    }

    /// `GET /v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, CliError> {
        self.get("/v1/whoami").await
    }

    /// `POST /v1/agencies`.
    pub async fn add_agency(&self, body: &AddAgency) -> Result<Added, CliError> {
        self.post("/v1/agencies", body).await
    }

    /// `GET /v1/agencies`.
    pub async fn agencies(&self) -> Result<Vec<AgencyView>, CliError> {
        self.get("/v1/agencies").await
    }

    /// `GET /v1/agencies/{code}`.
    pub async fn agency(&self, code: &AgencyCode) -> Result<AgencyView, CliError> {
        self.get(&format!("/v1/agencies/{code}")).await
    }

    /// `POST /v1/agencies/{code}/enable|disable`.
    pub async fn set_enabled(
        &self,
        code: &AgencyCode,
        enabled: bool,
    ) -> Result<AgencyView, CliError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.call("POST", &format!("/v1/agencies/{code}/{verb}"), None)
            .await
    }

    /// `POST /v1/agencies/{code}/rotate-key`.
    pub async fn rotate_key(&self, code: &AgencyCode, body: &Rotate) -> Result<Rotated, CliError> {
        self.post(&format!("/v1/agencies/{code}/rotate-key"), body)
            .await
    }

    /// `POST /v1/agencies/{code}/rotate-broker-password`.
    pub async fn rotate_broker_password(
        &self,
        code: &AgencyCode,
    ) -> Result<BrokerIssued, CliError> {
        self.call(
            "POST",
            &format!("/v1/agencies/{code}/rotate-broker-password"),
            None,
        )
        .await
    }

    /// `DELETE /v1/agencies/{code}`.
    pub async fn remove_agency(
        &self,
        code: &AgencyCode,
        q: &RemoveQuery,
    ) -> Result<Removed, CliError> {
        self.call(
            "DELETE",
            &with_query(&format!("/v1/agencies/{code}"), q),
            None,
        )
        .await
    }

    /// `POST /v1/agencies/import`.
    pub async fn import(&self, body: &Import) -> Result<Vec<Issued>, CliError> {
        self.post("/v1/agencies/import", body).await
    }

    /// `GET /v1/rabbitmq-definitions`.
    pub async fn definitions(&self) -> Result<RabbitDefinitions, CliError> {
        self.get("/v1/rabbitmq-definitions").await
    }

    /// `GET /v1/envelopes`.
    pub async fn envelope(&self, q: &EnvelopeQuery) -> Result<EnvelopeView, CliError> {
        self.get(&with_query("/v1/envelopes", q)).await
    }

    /// `GET /v1/envelopes/list`.
    pub async fn envelopes(&self, q: &ListQuery) -> Result<Vec<EnvelopeView>, CliError> {
        self.get(&with_query("/v1/envelopes/list", q)).await
    }

    /// `GET /v1/presence`.
    pub async fn presence(&self) -> Result<Vec<PresenceView>, CliError> {
        self.get("/v1/presence").await
    }

    /// `GET /v1/presence/{code}/history`.
    pub async fn presence_history(
        &self,
        code: &AgencyCode,
        q: &HistoryQuery,
    ) -> Result<PresenceHistory, CliError> {
        self.get(&with_query(&format!("/v1/presence/{code}/history"), q))
            .await
    }

    /// `GET /v1/queues`.
    pub async fn queues(&self) -> Result<Vec<QueueRow>, CliError> {
        self.get("/v1/queues").await
    }

    /// `GET /v1/queues/shape`.
    pub async fn shape(&self) -> Result<Shape, CliError> {
        self.get("/v1/queues/shape").await
    }

    /// `GET /v1/queues/{code}/peek`.
    pub async fn peek(&self, code: &AgencyCode, n: usize) -> Result<Vec<MessageView>, CliError> {
        self.get(&format!("/v1/queues/{code}/peek?n={n}")).await
    }

    /// `POST /v1/queues/{code}/purge`.
    pub async fn purge(&self, code: &AgencyCode) -> Result<PurgeReport, CliError> {
        self.call("POST", &format!("/v1/queues/{code}/purge"), None)
            .await
    }

    /// `GET /v1/dead`.
    pub async fn dead(&self, f: &DeadFilter) -> Result<DeadOutcome, CliError> {
        self.get(&with_query("/v1/dead", f)).await
    }

    /// `POST /v1/dead/retry`.
    pub async fn dead_retry(&self, b: &DeadBody) -> Result<DeadOutcome, CliError> {
        self.post("/v1/dead/retry", b).await
    }

    /// `POST /v1/dead/drop`.
    pub async fn dead_drop(&self, b: &DeadBody) -> Result<DeadOutcome, CliError> {
        self.post("/v1/dead/drop", b).await
    }

    /// `GET /v1/audit`.
    pub async fn audit_tail(
        &self,
        n: usize,
        after: Option<u64>,
    ) -> Result<Vec<AuditEntry>, CliError> {
        let mut path = format!("/v1/audit?n={n}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.get(&path).await
    }

    /// `GET /v1/audit/verify`.
    pub async fn audit_verify(&self) -> Result<VerifyReport, CliError> {
        self.get("/v1/audit/verify").await
    }

    /// `GET /v1/report`.
    pub async fn report(&self, q: &ReportQuery) -> Result<FullReport, CliError> {
        self.get(&with_query("/v1/report", q)).await
    }

    /// `GET /v1/instances`.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, CliError> {
        self.get("/v1/instances").await
    }

    /// `GET /v1/store/stats`.
    pub async fn store_stats(&self) -> Result<StoreStats, CliError> {
        self.get("/v1/store/stats").await
    }
}

impl Admin {
    /// `GET /v1/store/backup`: the sealed snapshot of the store.
    pub async fn store_backup(&self) -> Result<Vec<u8>, CliError> {
        self.call_bytes("GET", "/v1/store/backup", None).await
    }
}
