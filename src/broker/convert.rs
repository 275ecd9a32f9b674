//! Conversions between lapin's types and [`Message`].

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::core::message::{HeaderValue, Inbound, Message};
use crate::core::topology::ArgValue;

fn header_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => HeaderValue::Text(t.to_owned()),
            Err(_) => HeaderValue::Other("invalid utf-8".into()),
        },
        AMQPValue::ShortString(_) => HeaderValue::Other("short string".into()),
        AMQPValue::Boolean(_) => HeaderValue::Other("boolean".into()),
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => HeaderValue::Other("integer".into()),
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => {
            HeaderValue::Other("number".into())
        }
        AMQPValue::FieldArray(_) => HeaderValue::Other("array".into()),
        AMQPValue::Timestamp(_) => HeaderValue::Other("timestamp".into()),
        AMQPValue::FieldTable(_) => HeaderValue::Other("table".into()),
        AMQPValue::ByteArray(_) => HeaderValue::Other("byte array".into()),
        AMQPValue::Void => HeaderValue::Other("void".into()),
    }
}

/// lapin delivery → [`Inbound`].
pub(crate) fn inbound(d: lapin::message::Delivery) -> Inbound {
    let p = &d.properties;
    let mut headers = BTreeMap::new();
    if let Some(table) = p.headers() {
        for (k, v) in table.inner() {
            headers.insert(k.as_str().to_owned(), header_value(v));
        }
    }
    Inbound {
        message: Message {
            exchange: d.exchange.as_str().to_owned(),
            routing_key: d.routing_key.as_str().to_owned(),
            message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
            timestamp: *p.timestamp(),
            priority: *p.priority(),
            expiration: p.expiration().as_ref().map(|s| s.as_str().to_owned()),
            headers,
            body: d.data.into(),
        },
        delivery_tag: d.delivery_tag,
        redelivered: d.redelivered,
        content_space: None,
    }
}

/// [`Message`] → lapin properties (always persistent).
pub(crate) fn properties(m: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in &m.headers {
        // Only text headers are carried: a value truc could not read as text
        // (x-death tables, numbers from other tools) is not re-published.
        let HeaderValue::Text(text) = v else { continue };
        table.insert(
            ShortString::from(k.as_str()),
            AMQPValue::LongString(LongString::from(text.as_str())),
        );
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = &m.message_id {
        p = p.with_message_id(ShortString::from(id.as_str()));
    }
    if let Some(ct) = &m.content_type {
        p = p.with_content_type(ShortString::from(ct.as_str()));
    }
    if let Some(ts) = m.timestamp {
        p = p.with_timestamp(ts);
    }
    if let Some(pr) = m.priority {
        p = p.with_priority(pr);
    }
    if let Some(e) = &m.expiration {
        p = p.with_expiration(ShortString::from(e.as_str()));
    }
    p
}

/// Queue arguments → lapin field table.
pub(crate) fn arguments(args: &BTreeMap<String, ArgValue>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            ArgValue::Int(i) => match i32::try_from(*i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(*i),
            },
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        };
        t.insert(ShortString::from(k.as_str()), v);
    }
    t
}
