"""A client of the truc gateway (the agencies' HTTPS API of the LGSP hub).

Written from ``docs/openapi.json`` (paths, parameters, bodies, answers) and
the signing rules of ``docs/PROTOCOL.md`` only (§2.4 nonce, §2.5 times, §2.7
body digest, §4.1 canonical form, §4.2 HMAC-SHA256, §6.3 the hub signature of
a delivery, §8.2 the hub signature of a notice), with ``docs/GATEWAY.md`` for
how a signed message maps onto an HTTP request. It does not rely on the hub's
sources.

Upload spaces for large documents (the operations tagged ``spaces`` in the
OpenAPI document, PROTOCOL.md §3.3.1, §6.2 ``lgsp-content-space`` and §7, and
GATEWAY.md "Large documents") are written from the same documents: a document
goes up chunk by chunk (never whole in one request) and comes down streamed to
a file, hashed as it is read, resuming with ``Range`` after a cut.

Python 3 standard library only.

    gw = Gateway("127.0.0.1:8443", {"code": ..., "access_key": ..., "secret": ...})
    gw.open_session()
    gw.send_envelope("000.00.82.H41", "Công văn số 7", "Xin chào".encode(), "text/plain")
    space = gw.upload_document("scan.pdf")          # create, chunks, complete
    gw.send_space_envelope("000.00.82.H41", "Hồ sơ quét", space, "application/pdf")
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import urllib.parse

__all__ = [
    "Gateway",
    "GatewayError",
    "VerificationError",
    "body_digest",
    "canonical",
    "file_digest",
    "hmac_sha256_b64",
    "now_rfc3339",
    "new_message_id",
    "new_nonce",
]

EMPTY_DIGEST = "sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# Read and write files in blocks of this many bytes.
_BLOCK = 64 * 1024
# Content-Range of a 206 answer: bytes <first>-<last>/<size> (openapi fetchSpaceContent).
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class GatewayError(Exception):
    """A non-2xx answer: the HTTP status and the JSON error (``Error`` schema)."""

    def __init__(self, method, path, status, body, raw, headers=None):
        self.method = method
        self.path = path
        self.status = status
        self.body = body  # the parsed JSON answer, or None
        self.raw = raw  # the answer's bytes
        # the answer's headers, names in lower case
        self.headers = {k.lower(): v for k, v in (headers or [])}
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


def file_digest(source):
    """``(size, digest)`` of a document (§2.7), read in blocks: ``source`` is a
    path, bytes, or a binary file object that can seek."""
    h = hashlib.sha256()
    size = 0
    with _Document(source) as doc:
        while True:
            block = doc.read_at(size, _BLOCK)
            if not block:
                break
            h.update(block)
            size += len(block)
    return size, "sha256=" + h.hexdigest()


class _Document:
    """A document read by offset, never whole: a path (opened here), bytes, or
    a binary file object that can seek (left open)."""

    def __init__(self, source):
        self.source = source
        self.file = None
        self.owned = False

    def __enter__(self):
        if isinstance(self.source, (bytes, bytearray, memoryview)):
            self.view = memoryview(self.source)
        elif isinstance(self.source, (str, os.PathLike)):
            self.file = open(self.source, "rb")
            self.owned = True
        elif hasattr(self.source, "read") and hasattr(self.source, "seek"):
            self.file = self.source
        else:
            raise TypeError(f"not a document: {type(self.source).__name__}")
        return self

    def __exit__(self, *exc):
        if self.owned:
            self.file.close()

    def read_at(self, offset, n):
        if self.file is None:
            return bytes(self.view[offset : offset + n])
        self.file.seek(offset)
        out = bytearray()
        while len(out) < n:
            part = self.file.read(n - len(out))
            if not part:
                break
            out += part
        return bytes(out)


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

    def _open(self, method, path, headers=None, body=b"", query=None, timeout=None, auth=True):
        """Sends one request on a connection of its own; returns (connection,
        response) with the answer's body not read yet (close the connection).

        Header values may be str (sent as UTF-8, which Vietnamese subjects
        need: http.client would encode a str as Latin-1) or bytes. ``body`` is
        bytes or a binary file object, then streamed; give its
        ``Content-Length`` in ``headers``.
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
        if "Content-Length" not in out:
            if hasattr(body, "read"):
                raise ValueError("a streamed body needs its Content-Length")
            out["Content-Length"] = str(len(body)).encode("ascii")
        conn = self._connection(timeout if timeout is not None else self.timeout)
        try:
            # skip_accept_encoding: nothing but what we name; no Content-Type is
            # added by http.client (urllib.request would add a form type).
            conn.putrequest(method, full, skip_accept_encoding=True)
            for name, value in out.items():
                conn.putheader(name, value)
            # A file object is sent in blocks by http.client.
            conn.endheaders(body if hasattr(body, "read") or body else None)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        self.last_status = resp.status
        return conn, resp

    @staticmethod
    def _error(method, path, status, raw, headers=None):
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except ValueError:
            parsed = None
        return GatewayError(method, path, status, parsed, raw, headers)

    def _request(self, method, path, headers=None, body=b"", query=None, timeout=None, auth=True):
        """One request on its own connection; returns (status, headers, raw body).

        Raises GatewayError on a non-2xx answer (see ``_open`` for the rest).
        """
        conn, resp = self._open(method, path, headers, body, query, timeout, auth)
        try:
            raw = resp.read()
            status = resp.status
            resp_headers = resp.getheaders()
        finally:
            conn.close()
        if not 200 <= status < 300:
            raise self._error(method, self.base_path + path, status, raw, resp_headers)
        return status, resp_headers, raw

    def _json(self, method, path, **kw):
        status, _, raw = self._request(method, path, **kw)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise GatewayError(method, path, status, None, raw) from e

    def _signed(self, kind, path, extra, body, content_type, auth, digest=None, length=None):
        """POSTs a message signed for ``<kind>.<code>`` (PROTOCOL.md §3.2, §4).

        ``digest`` is the ``lgsp-digest`` when it is not the body's (an
        envelope naming an upload space, or a body streamed from a file whose
        digest was computed first); ``length`` the Content-Length of a body
        given as a file object."""
        message_id = new_message_id()
        lgsp = {
            "lgsp-version": "1",
            "lgsp-from": self.code,
            "lgsp-key": self.access_key,
            "lgsp-alg": "hmac-sha256",
            "lgsp-time": now_rfc3339(),
            "lgsp-nonce": new_nonce(),
            "lgsp-digest": digest if digest is not None else body_digest(body),
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
        if length is not None:
            headers["Content-Length"] = str(length)
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
        self,
        to,
        subject,
        body,
        content_type,
        data_type="edoc",
        extra_headers=None,
        digest=None,
        length=None,
    ):
        """``POST /v1/envelopes``: an envelope signed for ``envelope.<code>``.

        ``to`` is one code or a list of codes; ``body`` bytes (a str is sent
        as UTF-8), or a binary file object streamed with ``digest`` and
        ``length`` given; ``extra_headers`` more ``lgsp-*`` headers (e.g.
        ``lgsp-priority``). Returns ``Accepted`` with ``message_id``;
        ``last_status`` is 202 (accepted) or 200 (a repeat).
        """
        if isinstance(body, str):
            body = body.encode("utf-8")
        if hasattr(body, "read") and (digest is None or length is None):
            raise ValueError("a streamed body needs its digest and length")
        if not isinstance(to, str):
            to = ",".join(to)
        extra = {"lgsp-to": to, "lgsp-type": data_type, "lgsp-subject": subject}
        extra.update(extra_headers or {})
        message_id, answer = self._signed(
            "envelope",
            "/v1/envelopes",
            extra,
            body,
            content_type,
            auth=True,
            digest=digest,
            length=length,
        )
        answer.setdefault("message_id", message_id)
        return answer

    def send_envelope_file(self, to, subject, path, content_type, **kw):
        """``POST /v1/envelopes`` with the file at ``path`` as the body, the
        ordinary way (no space named): hashed first, then streamed from the
        file. A body over the policy's ``inline_bytes`` is kept by the hub in
        a space of its own (GATEWAY.md "Large bodies sent inline")."""
        size, digest = file_digest(path)
        with open(path, "rb") as f:
            return self.send_envelope(
                to, subject, f, content_type, digest=digest, length=size, **kw
            )

    def send_space_envelope(self, to, subject, space, content_type, digest=None, **kw):
        """``POST /v1/envelopes`` naming an upload space (PROTOCOL.md §3.3.1):
        an empty body, ``lgsp-space`` = the space's id and ``lgsp-digest`` =
        the document's digest. ``space`` is a ``SpaceInfo`` (its ``digest`` is
        used) or an id with ``digest`` given."""
        if isinstance(space, dict):
            space_id = space["id"]
            digest = digest or space["digest"]
        else:
            space_id = space
        if digest is None:
            raise ValueError("the document's digest is needed")
        extra = dict(kw.pop("extra_headers", None) or {})
        extra["lgsp-space"] = space_id
        return self.send_envelope(
            to, subject, b"", content_type, extra_headers=extra, digest=digest, **kw
        )

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
        is the delivery's; raises VerificationError otherwise. For a delivery
        whose document is in an upload space (``lgsp-content-space``) the body
        must be empty (PROTOCOL.md §7 step 2) and ``b""`` is returned: fetch the
        document with ``fetch_content``.
        """
        self.verify_delivery(delivery)
        _, headers, body = self._request("GET", self._delivery_path(delivery["id"]))
        signed = delivery["headers"].get("lgsp-digest")
        if self.content_space(delivery) is not None:
            if body:
                raise VerificationError(
                    f"delivery {delivery['id']}: {len(body)} bytes of body with lgsp-content-space"
                )
        elif body_digest(body) != signed:
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

    @staticmethod
    def content_space(delivery):
        """The upload space holding a listed delivery's document, or None.

        The signed header ``lgsp-content-space`` (covered by the hub
        signature) decides; the listing's ``content_space`` must agree."""
        signed = delivery["headers"].get("lgsp-content-space")
        listed = delivery.get("content_space")
        if signed != listed:
            raise VerificationError(
                f"delivery {delivery['id']}: content_space {listed!r} but "
                f"lgsp-content-space {signed!r}"
            )
        return signed

    def fetch_content(self, delivery, path, **kw):
        """The document of a delivery held in an upload space, streamed into
        the file at ``path`` (resumed if it holds a part already): verifies the
        hub signature over the listed headers, then the document's SHA-256
        against the signed ``lgsp-digest`` (PROTOCOL.md §6.2, §7 step 6).
        Returns what ``fetch_space_content`` returns."""
        self.verify_delivery(delivery)
        space_id = self.content_space(delivery)
        if space_id is None:
            raise ValueError(f"delivery {delivery['id']} has no content space")
        return self.fetch_space_content(
            space_id, path, digest=delivery["headers"]["lgsp-digest"], **kw
        )

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


    # -- upload spaces (large documents) -----------------------------------------

    @staticmethod
    def _space_path(space_id):
        if not isinstance(space_id, str) or not space_id:
            raise ValueError(f"not a space id: {space_id!r}")
        return "/v1/spaces/" + urllib.parse.quote(space_id, safe="")

    def create_space(self, size, digest):
        """``POST /v1/spaces`` ``{"size", "digest"}`` → ``SpaceInfo`` (201): a
        space for a document of ``size`` bytes whose digest is ``digest``."""
        body = json.dumps({"size": int(size), "digest": digest}).encode("utf-8")
        return self._json(
            "POST", "/v1/spaces", headers={"Content-Type": "application/json"}, body=body
        )

    def show_space(self, space_id):
        """``GET /v1/spaces/{id}`` → ``SpaceInfo`` (``missing``, ``complete``, …)."""
        return self._json("GET", self._space_path(space_id))

    def put_chunk(self, space_id, n, data):
        """``PUT /v1/spaces/{id}/chunks/{n}``: chunk ``n`` (from 0), exactly
        ``chunk_size`` bytes, the last chunk the rest → ``ChunkStored``. Safe
        to send again."""
        return self._json(
            "PUT",
            f"{self._space_path(space_id)}/chunks/{int(n)}",
            headers={"Content-Type": "application/octet-stream"},
            body=bytes(data),
        )

    def complete_space(self, space_id):
        """``POST /v1/spaces/{id}/complete`` → ``SpaceInfo`` (``complete: true``).
        409 while chunks are missing; 422 ``digest-mismatch`` deletes the space."""
        return self._json("POST", f"{self._space_path(space_id)}/complete")

    def delete_space(self, space_id):
        """``DELETE /v1/spaces/{id}`` (204): gives up a space no envelope uses."""
        self._request("DELETE", self._space_path(space_id))

    @staticmethod
    def chunk_span(space, n):
        """(offset, length) of chunk ``n`` of a ``SpaceInfo``."""
        size, chunk_size, chunks = space["size"], space["chunk_size"], space["chunks"]
        if not 0 <= n < chunks:
            raise ValueError(f"chunk {n} is not one of 0..{chunks - 1}")
        offset = n * chunk_size
        return offset, min(chunk_size, size - offset)

    def upload_chunks(self, space, source, chunks=None, tries=3):
        """Uploads chunks of ``source`` (a path, bytes, or a seekable binary
        file) into ``space`` (a ``SpaceInfo``), one request per chunk, each
        read from the document when it is sent: ``chunks`` in the order given
        (by default what ``space`` lists as ``missing``). A chunk whose
        request failed (connection, 408, 5xx) is sent again, up to ``tries``
        times. Returns the ``ChunkStored`` answers."""
        if chunks is None:
            chunks = list(space["missing"])
        answers = []
        with _Document(source) as doc:
            for n in chunks:
                offset, length = self.chunk_span(space, n)
                data = doc.read_at(offset, length)
                if len(data) != length:
                    raise ValueError(
                        f"chunk {n}: the document has {len(data)} bytes at {offset}, not {length}"
                    )
                for attempt in range(1, tries + 1):
                    try:
                        answers.append(self.put_chunk(space["id"], n, data))
                        break
                    except (OSError, http.client.HTTPException):
                        if attempt == tries:
                            raise
                    except GatewayError as e:
                        if attempt == tries or not (e.status == 408 or e.status >= 500):
                            raise
        return answers

    def upload_document(self, source, space=None):
        """The whole upload, resumable: asks for a space (size and digest read
        from ``source`` first) unless ``space`` (a ``SpaceInfo`` or an id) is
        given, uploads what the space says is ``missing``, and completes it.
        Returns the completed ``SpaceInfo``."""
        if space is None:
            size, digest = file_digest(source)
            space = self.create_space(size, digest)
        elif not isinstance(space, dict):
            space = self.show_space(space)
        else:
            space = self.show_space(space["id"])
        if not space["complete"]:
            self.upload_chunks(space, source)
        return self.complete_space(space["id"])

    def open_space_content(self, space_id, first=None, last=None, suffix=None):
        """``GET /v1/spaces/{id}/content``, the answer not read yet: the whole
        document, or ``Range: bytes=<first>-<last>`` (``last`` None: to the
        end), or ``bytes=-<suffix>``. Returns (connection, response): read the
        response, then close the connection. Raises GatewayError on an answer
        that is not 200 or 206."""
        headers = {}
        if suffix is not None:
            headers["Range"] = f"bytes=-{int(suffix)}"
        elif first is not None:
            headers["Range"] = f"bytes={int(first)}-" + ("" if last is None else str(int(last)))
        path = f"{self._space_path(space_id)}/content"
        conn, resp = self._open("GET", path, headers=headers)
        if resp.status not in (200, 206):
            try:
                raw = resp.read()
                headers = resp.getheaders()
            finally:
                conn.close()
            raise self._error("GET", self.base_path + path, resp.status, raw, headers)
        return conn, resp

    def read_space_range(self, space_id, first=None, last=None, suffix=None):
        """One range of a space's document as bytes (small ranges only):
        (status, Content-Range, bytes)."""
        conn, resp = self.open_space_content(space_id, first, last, suffix)
        try:
            data = resp.read()
            return resp.status, resp.getheader("Content-Range"), data
        finally:
            conn.close()

    def fetch_space_content(self, space_id, path, digest=None, resume=True, stop_after=None):
        """Streams a space's document into the file at ``path``, hashing it as
        it is read.

        With ``resume`` and a file already holding ``k`` bytes (an earlier,
        cut download), those are hashed from the file and the rest is asked
        for with ``Range: bytes=<k>-`` (a 200 answer instead starts over).
        ``stop_after`` stops reading after that many bytes of this answer and
        drops the connection: a cut download, for tests. Once whole, the
        document's digest must be ``digest`` (the delivery's signed
        ``lgsp-digest``) and the answer's ``lgsp-digest`` header; otherwise
        VerificationError.

        Returns a dict: ``status`` (200 or 206; 416 when the file was whole
        already), ``first`` (the offset this answer started at),
        ``received`` (bytes in this answer), ``size`` (the document's),
        ``have`` (bytes in the file now), ``complete``, and ``digest`` (of
        the file, once complete).
        """
        h = hashlib.sha256()
        have = 0
        if resume and os.path.exists(path):
            with open(path, "rb") as f:
                while True:
                    block = f.read(_BLOCK)
                    if not block:
                        break
                    h.update(block)
                    have += len(block)
        if have:
            try:
                conn, resp = self.open_space_content(space_id, first=have)
            except GatewayError as e:
                # 416: nothing from `have` on; the file is whole if `have` is the size.
                m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("content-range", ""))
                if e.status != 416 or not m or int(m.group(1)) != have:
                    raise
                return self._content_done(
                    space_id, h, have, int(m.group(1)), digest, None,
                    {"status": 416, "first": have, "received": 0},
                )
        else:
            conn, resp = self.open_space_content(space_id)
        try:
            status = resp.status
            if status == 206:
                m = _CONTENT_RANGE.fullmatch(resp.getheader("Content-Range") or "")
                if not m:
                    raise VerificationError(
                        f"space {space_id}: 206 with Content-Range {resp.getheader('Content-Range')!r}"
                    )
                first, last, size = (int(g) for g in m.groups())
                if first != have or last != size - 1:
                    raise VerificationError(
                        f"space {space_id}: asked for bytes {have}- of the document, "
                        f"got {first}-{last}/{size}"
                    )
                mode = "ab"
            else:
                first, size = 0, int(resp.getheader("Content-Length"))
                if have:
                    h, have = hashlib.sha256(), 0  # a 200 answer: start over
                mode = "wb"
            received = 0
            with open(path, mode) as f:
                while True:
                    n = _BLOCK if stop_after is None else min(_BLOCK, stop_after - received)
                    if n <= 0:
                        break
                    block = resp.read(n)
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    received += len(block)
                f.flush()
                os.fsync(f.fileno())
            header_digest = resp.getheader("lgsp-digest")
        finally:
            conn.close()  # after stop_after: the rest is never read (a cut)
        have += received
        info = {"status": status, "first": first, "received": received}
        if stop_after is not None and have < size:
            info.update(size=size, have=have, complete=False, digest=None)
            return info
        return self._content_done(space_id, h, have, size, digest, header_digest, info)

    @staticmethod
    def _content_done(space_id, h, have, size, digest, header_digest, info):
        if have != size:
            raise VerificationError(f"space {space_id}: {have} bytes fetched of {size}")
        got = "sha256=" + h.hexdigest()
        if digest is not None and got != digest:
            raise VerificationError(
                f"space {space_id}: the document has digest {got}, not the signed {digest}"
            )
        if header_digest is not None and header_digest != got:
            raise VerificationError(
                f"space {space_id}: the answer's lgsp-digest {header_digest} is not {got}"
            )
        info.update(size=size, have=have, complete=True, digest=got)
        return info
