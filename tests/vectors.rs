//! The published test vectors (`tests/vectors.json`, also printed in
//! `docs/PROTOCOL.md` §12) agree with the code, byte for byte.
//!
//! For every vector the canonical text is parsed back into a [`Message`]
//! (line 2 routing key, line 3 `message_id`, line 4 `content_type`, then one
//! `name:value` header per line, split at the first colon), and the crate's
//! own canonical form and HMAC-SHA256 signature must reproduce the vector.
//! Where a vector has a body, its `lgsp-digest` must match it; a notice body
//! must round-trip through [`Notice`] unchanged and be what the hub's notice
//! builder produces; a recall request body must be what the hub writes.

use serde::Deserialize;
use truc::auth::{body_digest, sign_hmac, Alg};
use truc::canonical::canonical_form;
use truc::message::Message;
use truc::notice::{hub_sign, HubKey, Notice, HUB_KEY_HEADER};

/// One object of `tests/vectors.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    secret: String,
    canonical: String,
    #[serde(default)]
    body: Option<String>,
    signature: String,
}

fn vectors() -> Vec<Vector> {
    let v: Vec<Vector> =
        serde_json::from_str(include_str!("vectors.json")).expect("tests/vectors.json parses");
    assert!(!v.is_empty(), "no vectors");
    v
}

/// The message a canonical text was built from, and its routing key.
fn parse(name: &str, canonical: &str, body: Option<&str>) -> (Message, String) {
    let mut lines = canonical.split('\n');
    assert_eq!(lines.next(), Some("LGSP1"), "{name}: line 1");
    let routing_key = lines.next().expect("line 2: routing key").to_owned();
    let message_id = lines.next().expect("line 3: message_id").to_owned();
    let content_type = lines.next().expect("line 4: content_type");
    let mut m = Message {
        routing_key: routing_key.clone(),
        message_id: Some(message_id),
        content_type: (!content_type.is_empty()).then(|| content_type.to_owned()),
        ..Message::default()
    };
    for line in lines {
        let (header, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: header line without a colon: {line:?}"));
        m.set_header(header, value);
    }
    if let Some(b) = body {
        m.body = b.as_bytes().into();
    }
    (m, routing_key)
}

#[test]
fn canonical_forms_and_signatures_match_the_code() {
    for v in vectors() {
        let (m, routing_key) = parse(&v.name, &v.canonical, v.body.as_deref());
        assert_eq!(
            canonical_form(&m, &routing_key).expect("canonical form"),
            v.canonical,
            "{}: canonical form",
            v.name
        );
        assert_eq!(
            sign_hmac(Alg::HmacSha256, &v.secret, v.canonical.as_bytes()),
            v.signature,
            "{}: signature",
            v.name
        );
    }
}

#[test]
fn bodies_match_their_digest() {
    for v in vectors() {
        let Some(body) = v.body.as_deref() else {
            continue;
        };
        let (m, _) = parse(&v.name, &v.canonical, Some(body));
        assert_eq!(
            m.header("lgsp-digest"),
            Some(body_digest(body.as_bytes()).as_str()),
            "{}: lgsp-digest",
            v.name
        );
    }
}

#[test]
fn notice_vectors_are_what_the_hub_sends() {
    let mut seen = 0;
    for v in vectors() {
        let (m, routing_key) = parse(&v.name, &v.canonical, v.body.as_deref());
        if !routing_key.starts_with("notice.") {
            continue;
        }
        seen += 1;
        let body = v
            .body
            .as_deref()
            .unwrap_or_else(|| panic!("{}: a notice vector needs its body", v.name));
        assert_eq!(
            m.header("lgsp-digest"),
            Some(body_digest(body.as_bytes()).as_str()),
            "{}: lgsp-digest",
            v.name
        );
        let notice: Notice = serde_json::from_str(body).expect("the body is a notice");
        assert_eq!(
            serde_json::to_string(&notice).expect("serialises"),
            body,
            "{}: the body round-trips byte for byte",
            v.name
        );
        assert_eq!(
            routing_key,
            format!("notice.{}", notice.source),
            "{}",
            v.name
        );

        // The hub's own builder gives the same body, headers and signature
        // (its message id is fresh, so the vector's is put in its place),
        // signed with the key the vector names in lgsp-hub-key (vectors from
        // before lgsp-hub-key name none).
        let prefix = "lgsp.";
        let key = HubKey {
            access_key: m.header(HUB_KEY_HEADER),
            secret: &v.secret,
        };
        let mut built = notice.to_message(prefix, key);
        assert_eq!(&*built.body, body.as_bytes(), "{}: built body", v.name);
        assert_eq!(built.exchange, "lgsp.notify", "{}", v.name);
        assert_eq!(built.routing_key, notice.source.as_str(), "{}", v.name);
        built.message_id = m.message_id.clone();
        hub_sign(&mut built, &routing_key, key);
        assert_eq!(
            canonical_form(&built, &routing_key).expect("canonical form"),
            v.canonical,
            "{}: built canonical form",
            v.name
        );
        assert_eq!(
            built.header("lgsp-hub-signature"),
            Some(v.signature.as_str()),
            "{}: built hub signature",
            v.name
        );
    }
    assert!(seen > 0, "no notice vectors");
}

#[test]
fn recall_request_vectors_carry_the_hub_body() {
    let mut seen = 0;
    for v in vectors() {
        let (m, routing_key) = parse(&v.name, &v.canonical, v.body.as_deref());
        if m.header("lgsp-kind") != Some("recall") {
            continue;
        }
        seen += 1;
        assert_eq!(
            routing_key,
            format!("deliver.{}", m.header("lgsp-dest").expect("lgsp-dest")),
            "{}",
            v.name
        );
        let body = v.body.as_deref().expect("a recall request has a body");
        // Built as the hub builds it: a JSON object (keys in sorted order).
        let expected = serde_json::json!({
            "recall": m.header("lgsp-ref").expect("lgsp-ref"),
            "from": m.header("lgsp-from").expect("lgsp-from"),
            "reason": m.header("lgsp-reason"),
        });
        assert_eq!(
            serde_json::to_string(&expected).expect("serialises"),
            body,
            "{}: recall body",
            v.name
        );
    }
    assert!(seen > 0, "no recall request vectors");
}

#[test]
fn hub_key_vectors_are_signed_as_the_hub_signs() {
    let mut seen = 0;
    for v in vectors() {
        let (m, routing_key) = parse(&v.name, &v.canonical, v.body.as_deref());
        let Some(named) = m.header(HUB_KEY_HEADER).map(str::to_owned) else {
            continue;
        };
        seen += 1;
        assert!(
            routing_key.starts_with("deliver.") || routing_key.starts_with("notice."),
            "{}: only what the hub sends names lgsp-hub-key",
            v.name
        );
        // The hub's signer sets lgsp-hub-key itself and signs over it.
        let mut built = m.clone();
        built.headers.remove(HUB_KEY_HEADER);
        hub_sign(&mut built, &routing_key, HubKey::new(&named, &v.secret));
        assert_eq!(
            built.header(HUB_KEY_HEADER),
            Some(named.as_str()),
            "{}",
            v.name
        );
        assert_eq!(
            built.header("lgsp-hub-signature"),
            Some(v.signature.as_str()),
            "{}: built hub signature",
            v.name
        );
        // lgsp-hub-key is covered: naming another key breaks the signature.
        let mut other = m.clone();
        other.set_header(HUB_KEY_HEADER, "AKNOTTHEKEY2");
        let canon = canonical_form(&other, &routing_key).expect("canonical form");
        assert_ne!(
            sign_hmac(Alg::HmacSha256, &v.secret, canon.as_bytes()),
            v.signature,
            "{}",
            v.name
        );
    }
    assert!(
        seen >= 2,
        "a delivery and a notice vector name lgsp-hub-key"
    );
}
