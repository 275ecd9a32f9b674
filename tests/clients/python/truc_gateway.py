"""A client of the truc gateway (the agencies' HTTPS API of the LGSP hub).

Written from ``docs/openapi.json`` (paths, parameters, bodies, answers) and
the signing rules of ``docs/PROTOCOL.md`` only (§2.4 nonce, §2.5 times, §2.7
body digest, §4.1 canonical form, §4.2 HMAC-SHA256, §6.3 the hub signature of
a delivery, §8.2 the hub signature of a notice), with ``docs/GATEWAY.md`` for
how a signed message maps onto an HTTP request. It does not rely on the hub's
sources.

Python 3 standard library only.

    gw = Gateway("127.0.0.1:8443", {"code": ..., "access_key": ..., "secret": ...})
    gw.open_session()
    gw.send_envelope("000.00.82.H41", "Công văn số 7", "Xin chào".encode(), "text/plain")
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import secrets
import urllib.parse

__all__ = [
    "Gateway",
    "GatewayError",
    "VerificationError",
    "body_digest",
    "canonical",
    "hmac_sha256_b64",
    "now_rfc3339",
    "new_message_id",
    "new_nonce",
]

EMPTY_DIGEST = "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class GatewayError(Exception):
    """A non-2xx answer: the HTTP status and the JSON error (``Error`` schema)."""

    def __init__(self, method, path, status, body, raw):
        self.method = method
        self.path = path
        self.status = status
        self.body = body  # the parsed JSON answer, or None
        self.raw = raw  # the answer's bytes
        if isinstance(body, dict):
            what = json.dumps(body, ensure_ascii=False)
        else:
            what = raw.decode("utf-8", "replace")
        super().__init__(f"{method} {path} answered {status}: {what}")

    @property
    def reason(self):
        """The contract's reason code, when the answer has one."""
        return self.body.get("reason") if isinstance(self.body, dict) else None


class VerificationError(Exception):
    """Something the hub sent does not verify (hub signature or digest)."""


# --- signing (PROTOCOL.md §2.4, §2.5, §2.7, §4.1, §4.2) ---------------------


def now_rfc3339():
    """The signing time: RFC 3339 UTC with the ``Z`` suffix (§2.5)."""
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def new_nonce():
    """A fresh nonce: 16 random bytes as 32 hex digits (§2.4)."""
    return secrets.token_hex(16)


def new_message_id():
    """A fresh message id: 32 hex digits (§2.2)."""
    return secrets.token_hex(16)


def body_digest(body):
    """``sha256=`` and the lowercase hex SHA-256 of the body bytes (§2.7)."""
    return "sha256=" + hashlib.sha256(body).hexdigest()


def canonical(routing_key, message_id, content_type, headers):
    """The canonical form (§4.1) as UTF-8 bytes.

    ``headers`` maps header names to values; every name starting with
    ``lgsp-`` takes part, except ``lgsp-signature`` and
    ``lgsp-hub-signature``, sorted bytewise by name.
    """
    lines = ["LGSP1", routing_key, message_id, content_type or ""]
    names = sorted(
        (
            n
            for n in headers
            if n.startswith("lgsp-") and n not in ("lgsp-signature", "lgsp-hub-signature")
        ),
        key=lambda n: n.encode("utf-8"),
    )
    lines.extend(f"{n}:{headers[n]}" for n in names)
    return "\n".join(lines).encode("utf-8")


def _check_value(name, value):
    """Refuses a header value the hub could not get back verbatim: a control
    character (PROTOCOL.md §2.8), or a leading or trailing space, which HTTP
    drops (docs/GATEWAY.md) so that the signature would not verify."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: header values are str, not {type(value).__name__}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError(f"{name}: control character in {value!r}")
    if value != value.strip(" "):
        raise ValueError(f"{name}: leading or trailing space in {value!r} (HTTP drops it)")


def hmac_sha256_b64(secret, data):
    """Standard padded base64 of HMAC-SHA256 keyed with the secret's UTF-8 bytes (§4.2)."""
    mac = hmac.new(secret.encode("utf-8"), data, hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


# --- the client ---------------------------------------------------------------


class Gateway:
    """One agency's client of the gateway.

    ``addr`` is ``host:port`` (plain HTTP, for a gateway on loopback) or a
    URL ``https://host:port`` / ``http://host:port``. ``creds`` is a dict
    with ``code``, ``access_key`` and ``secret`` (and optionally
    ``previous_keys``: ``[{"access_key", "secret"}]``, kept to verify what
    the hub signed with an earlier key).
    """

    def __init__(self, addr, creds, timeout=30.0, ssl_context=None):
        if "://" not in addr:
            addr = "http://" + addr
        url = urllib.parse.urlsplit(addr)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme in {addr!r}")
        self.scheme = url.scheme
        self.netloc = url.netloc
        self.base_path = url.path.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.code = creds["code"]
        self.access_key = creds["access_key"]
        self.secret = creds["secret"]
        # Every secret held, by access key (§2.3.1: verify with the key the
        # hub names in lgsp-hub-key).
        self.secrets = {self.access_key: self.secret}
        for k in creds.get("previous_keys") or []:
            self.secrets.setdefault(k["access_key"], k["secret"])
        self.token = None
        self.session = None
        self.last_status = None

    # -- HTTP ------------------------------------------------------------------

    def _connection(self, timeout):
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.netloc, timeout=timeout, context=self.ssl_context
            )
        return http.client.HTTPConnection(self.netloc, timeout=timeout)

    def _request(self, method, path, headers=None, body=b"", query=None, timeout=None, auth=True):
        """One request on its own connection; returns (status, headers, raw body).

        Raises GatewayError on a non-2xx answer. Header values may be str
        (sent as UTF-8, which Vietnamese subjects need: http.client would
        encode a str as Latin-1) or bytes.
        """
        full = self.base_path + path
        if query:
            full += "?" + urllib.parse.urlencode(query)
        out = {}
        for name, value in (headers or {}).items():
            out[name] = value.encode("utf-8") if isinstance(value, str) else value
        if auth:
            if self.token is None:
                raise RuntimeError("no session: call open_session() first")
            out["Authorization"] = f"Bearer {self.token}".encode("ascii")
        out.setdefault("Content-Length", str(len(body)).encode("ascii"))
        conn = self._connection(timeout if timeout is not None else self.timeout)
        try:
            # skip_accept_encoding: nothing but what we name; no Content-Type is
            # added by http.client (urllib.request would add a form type).
            conn.putrequest(method, full, skip_accept_encoding=True)
            for name, value in out.items():
                conn.putheader(name, value)
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
            resp_headers = resp.getheaders()
        finally:
            conn.close()
        self.last_status = status
        if not 200 <= status < 300:
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except ValueError:
                parsed = None
            raise GatewayError(method, full, status, parsed, raw)
        return status, resp_headers, raw

    def _json(self, method, path, **kw):
        status, _, raw = self._request(method, path, **kw)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise GatewayError(method, path, status, None, raw) from e

    def _signed(self, kind, path, extra, body, content_type, auth):
        """POSTs a message signed for ``<kind>.<code>`` (PROTOCOL.md §3.2, §4)."""
        message_id = new_message_id()
        lgsp = {
            "lgsp-version": "1",
            "lgsp-from": self.code,
            "lgsp-key": self.access_key,
            "lgsp-alg": "hmac-sha256",
            "lgsp-time": now_rfc3339(),
            "lgsp-nonce": new_nonce(),
            "lgsp-digest": body_digest(body),
        }
        for name, value in (extra or {}).items():
            if value is not None:
                lgsp[name] = value
        for name, value in lgsp.items():
            _check_value(name, value)
        if content_type is not None:
            _check_value("Content-Type", content_type)
        routing_key = f"{kind}.{self.code}"
        lgsp["lgsp-signature"] = hmac_sha256_b64(
            self.secret, canonical(routing_key, message_id, content_type, lgsp)
        )
        headers = dict(lgsp)
        headers["Message-Id"] = message_id
        if content_type is not None:
            headers["Content-Type"] = content_type
        answer = self._json("POST", path, headers=headers, body=body, auth=auth)
        return message_id, answer

    # -- sessions --------------------------------------------------------------

    def open_session(self):
        """``POST /v1/sessions``: a session request signed for ``session.<code>``,
        empty body, no content type. Returns ``SessionGranted``."""
        _, granted = self._signed("session", "/v1/sessions", None, b"", None, auth=False)
        self.token = granted["token"]
        self.session = granted
        return granted

    def renew(self):
        """``POST /v1/session/renew``: a new token (``SessionGranted``)."""
        granted = self._json("POST", "/v1/session/renew")
        self.token = granted["token"]
        self.session = granted
        return granted

    def show_session(self):
        """``GET /v1/session``: ``SessionInfo`` (``agency``, ``expires_at``)."""
        return self._json("GET", "/v1/session")

    # -- sending ---------------------------------------------------------------

    def send_envelope(
        self, to, subject, body, content_type, data_type="edoc", extra_headers=None
    ):
        """``POST /v1/envelopes``: an envelope signed for ``envelope.<code>``.

        ``to`` is one code or a list of codes; ``body`` bytes (a str is sent
        as UTF-8); ``extra_headers`` more ``lgsp-*`` headers (e.g.
        ``lgsp-priority``). Returns ``Accepted`` with ``message_id``;
        ``last_status`` is 202 (accepted) or 200 (a repeat).
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(to, str):
            to = ",".join(to)
        extra = {"lgsp-to": to, "lgsp-type": data_type, "lgsp-subject": subject}
        extra.update(extra_headers or {})
        message_id, answer = self._signed(
            "envelope", "/v1/envelopes", extra, body, content_type, auth=True
        )
        answer.setdefault("message_id", message_id)
        return answer

    def post_status(self, ref, status, to=None, reason=None):
        """``POST /v1/statuses``: status ``status`` (e.g. ``"01"``) about envelope
        ``ref``, signed for ``status.<code>``; ``to`` is the envelope's source.
        Empty ``text/plain`` body. Returns ``Recorded`` (with ``settled``)."""
        extra = {"lgsp-ref": ref, "lgsp-status": status, "lgsp-to": to, "lgsp-reason": reason}
        _, answer = self._signed("status", "/v1/statuses", extra, b"", "text/plain", auth=True)
        return answer

    # -- receiving -------------------------------------------------------------

    def list_deliveries(self, wait=0, limit=None):
        """``GET /v1/deliveries``: the held deliveries (``Delivery``), oldest first."""
        query = {"wait": int(wait)}
        if limit is not None:
            query["limit"] = int(limit)
        answer = self._json(
            "GET", "/v1/deliveries", query=query, timeout=self.timeout + wait
        )
        return answer["deliveries"]

    @staticmethod
    def _delivery_path(delivery_id):
        source, sep, message_id = delivery_id.partition("/")
        if not sep or not source or not message_id:
            raise ValueError(f"not a delivery id <from>/<message_id>: {delivery_id!r}")
        q = urllib.parse.quote
        return f"/v1/deliveries/{q(source, safe='')}/{q(message_id, safe='')}"

    def verify_delivery(self, delivery):
        """Checks ``lgsp-hub-signature`` of a listed delivery (PROTOCOL.md §6.3):
        HMAC-SHA256 over the canonical form of its ``headers`` with routing key
        ``deliver.<own code>``, its ``message_id`` and ``content_type``."""
        headers = delivery["headers"]
        self._verify_hub_signature(
            headers,
            f"deliver.{self.code}",
            delivery["message_id"],
            delivery.get("content_type"),
            what=f"delivery {delivery['id']}",
        )

    def _verify_hub_signature(self, headers, routing_key, message_id, content_type, what):
        given = headers.get("lgsp-hub-signature")
        if not given:
            raise VerificationError(f"{what}: no lgsp-hub-signature")
        key = headers.get("lgsp-hub-key", self.access_key)
        secret = self.secrets.get(key)
        if secret is None:
            raise VerificationError(
                f"{what}: signed with key {key}, which is not held (held: {sorted(self.secrets)})"
            )
        want = hmac_sha256_b64(secret, canonical(routing_key, message_id, content_type, headers))
        if not hmac.compare_digest(want, given):
            raise VerificationError(f"{what}: lgsp-hub-signature does not verify (key {key})")

    def fetch(self, delivery):
        """``GET /v1/deliveries/{from}/{message_id}``: the body of a listed delivery.

        Verifies the hub signature over the listed headers, then that the body's
        digest is the signed ``lgsp-digest`` and that the answer's ``Message-Id``
        is the delivery's; raises VerificationError otherwise.
        """
        self.verify_delivery(delivery)
        _, headers, body = self._request("GET", self._delivery_path(delivery["id"]))
        signed = delivery["headers"].get("lgsp-digest")
        if body_digest(body) != signed:
            raise VerificationError(
                f"delivery {delivery['id']}: body digest {body_digest(body)} is not "
                f"the signed lgsp-digest {signed}"
            )
        got = {k.lower(): v for k, v in headers}
        if got.get("message-id") not in (None, delivery["message_id"]):
            raise VerificationError(
                f"delivery {delivery['id']}: answer's Message-Id {got.get('message-id')!r}"
            )
        return body

    def ack(self, delivery_id):
        """``POST /v1/deliveries/{from}/{message_id}/ack`` → ``SettledAnswer``."""
        return self._json("POST", self._delivery_path(delivery_id) + "/ack")

    def reject(self, delivery_id):
        """``POST /v1/deliveries/{from}/{message_id}/reject`` → ``SettledAnswer``."""
        return self._json("POST", self._delivery_path(delivery_id) + "/reject")

    # -- notices ---------------------------------------------------------------

    def list_notices(self, wait=0, limit=None):
        """``GET /v1/notices``: the held notices (``Notice``), oldest first."""
        query = {"wait": int(wait)}
        if limit is not None:
            query["limit"] = int(limit)
        answer = self._json("GET", "/v1/notices", query=query, timeout=self.timeout + wait)
        return answer["notices"]

    def verify_notice(self, notice):
        """Checks a listed notice (PROTOCOL.md §8.2): ``lgsp-hub-signature`` over
        its ``headers`` with routing key ``notice.<own code>``, its ``id`` as
        message id and ``application/json``; then ``lgsp-digest`` against the
        body, which the listing gives byte for byte as ``body``."""
        what = f"notice {notice['id']}"
        self._verify_hub_signature(
            notice["headers"], f"notice.{self.code}", notice["id"], "application/json", what
        )
        body = notice["body"].encode("utf-8")
        digest = body_digest(body)
        if digest != notice["headers"].get("lgsp-digest"):
            raise VerificationError(
                f"{what}: the body has digest {digest}, "
                f"not the signed {notice['headers'].get('lgsp-digest')}"
            )
        if json.loads(notice["body"]) != notice["notice"]:
            raise VerificationError(f"{what}: body and notice differ")

    def ack_notices(self, ids):
        """``POST /v1/notices/ack`` → ``NoticesAcked`` (``acknowledged``, ``not_held``)."""
        body = json.dumps({"ids": list(ids)}).encode("utf-8")
        return self._json(
            "POST",
            "/v1/notices/ack",
            headers={"Content-Type": "application/json"},
            body=body,
        )
