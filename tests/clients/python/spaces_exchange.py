#!/usr/bin/env python3
"""Large documents between two HTTPS-only agencies through the truc gateway,
with the client of truc_gateway.py (written from docs/openapi.json,
docs/PROTOCOL.md and docs/GATEWAY.md only).

    python3 spaces_exchange.py GATEWAY_ADDR CREDS_A.json CREDS_B.json

A uploads a 3.5 MB document into an upload space out of order, resumes after
a "cut", completes it and sends an envelope naming it; a second envelope
naming the same space is refused; B lists the delivery, verifies it, fetches
the document in two parts (a cut download resumed with Range), checks its
digest and confirms it; the space is then gone. Then A sends a 6 MB body the
ordinary way and B finds it in a space the hub made, fetches and confirms it.
Prints one line per step; exits 0 only if every check passes, 1 at the first
that fails (2 on bad arguments).
"""

import hashlib
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from exchange import CheckFailed, check, load_creds, step  # noqa: E402
from truc_gateway import (  # noqa: E402
    EMPTY_DIGEST,
    Gateway,
    GatewayError,
    VerificationError,
    file_digest,
)

MIB = 1048576
DOC_SIZE = 3 * MIB + 524_305  # ~3.5 MB: four chunks, the last one short
INLINE_SIZE = 6_000_000  # over inline_bytes (4 MiB), under max_body_bytes
CUT_AT = 1_500_000  # where B's first download is cut
WAIT_S = 10
DEADLINE_S = 30
GONE_S = 8  # how long the hub may take to delete a delivered space
SPACE_ID = re.compile(r"[0-9a-f]{32}")


def make_document(path, size, seed):
    """``size`` deterministic bytes (SHAKE-256 of seed and block number) into
    ``path``, a block at a time."""
    with open(path, "wb") as f:
        i = 0
        while size:
            n = min(MIB, size)
            f.write(hashlib.shake_256(seed + i.to_bytes(8, "big")).digest(n))
            size -= n
            i += 1


def refused(what, f, status, reason=None, json_error=True):
    """Runs ``f``; it must raise GatewayError with ``status`` (and ``reason``),
    and a JSON ``Error`` unless ``json_error`` is false."""
    try:
        got = f()
    except GatewayError as e:
        check(e.status == status, f"{what}: answered {e.status}, not {status}: {e}")
        if json_error:
            check(isinstance(e.body, dict) and e.body.get("error"), f"{what}: no JSON error: {e.raw!r}")
        if reason is not None:
            check(e.reason == reason, f"{what}: reason {e.reason!r}, not {reason!r}: {e}")
        return e
    raise CheckFailed(f"{what}: accepted ({got!r}), not {status}")


def wait_delivery(b, source, mid):
    end = time.monotonic() + DEADLINE_S
    while True:
        check(time.monotonic() < end, f"envelope {mid} not listed for B within {DEADLINE_S} s")
        for d in b.list_deliveries(wait=WAIT_S):
            if d.get("message_id") == mid and d.get("from") == source:
                return d
        time.sleep(0.1)


def wait_gone(gw, space_id, who):
    """Polls GET /v1/spaces/{id} until it answers 404; seconds it took."""
    start = time.monotonic()
    while True:
        try:
            info = gw.show_space(space_id)
        except GatewayError as e:
            check(e.status == 404, f"{who}: GET space {space_id} answered {e.status}: {e}")
            return time.monotonic() - start
        check(
            time.monotonic() - start < GONE_S,
            f"space {space_id} still there for {who} {GONE_S} s after delivery: {info}",
        )
        time.sleep(0.2)


def same_file(path_a, path_b):
    return file_digest(path_a) == file_digest(path_b)


def run(addr, creds_a, creds_b, tmp):
    a = Gateway(addr, creds_a)
    b = Gateway(addr, creds_b)
    a.open_session()
    b.open_session()
    step(0, f"A ({a.code}) and B ({b.code}) opened sessions")

    # --- A uploads a document into a space ----------------------------------
    doc = os.path.join(tmp, "scan.pdf")
    make_document(doc, DOC_SIZE, b"truc spaces test: scan")
    size, digest = file_digest(doc)
    check(size == DOC_SIZE, f"document of {size} bytes")

    space = a.create_space(size, digest)
    sid = space["id"]
    check(a.last_status == 201, f"POST /v1/spaces answered {a.last_status}, not 201")
    check(SPACE_ID.fullmatch(sid or ""), f"space id {sid!r} is not 32 lowercase hex digits")
    check(space["owner"] == a.code, f"owner {space['owner']!r}")
    check(space["size"] == size and space["digest"] == digest, f"size/digest: {space}")
    check(space["chunk_size"] == MIB, f"chunk_size {space['chunk_size']}")
    chunks = space["chunks"]
    check(chunks == 4, f"{chunks} chunks for {size} bytes, not 4")
    check(space["missing"] == [0, 1, 2, 3] and space["complete"] is False, f"new space: {space}")
    check(space.get("unused_until"), f"no unused_until: {space}")
    step(1, f"A asked for space {sid}: {size} bytes, {chunks} chunks of {space['chunk_size']}, "
         f"unused until {space['unused_until']}")

    stored = a.upload_chunks(space, doc, chunks=[3, 1])
    check([s["chunk"] for s in stored] == [3, 1], f"stored {stored}")
    check([s["received"] for s in stored] == [1, 2], f"received counts {stored}")
    check(all(s["chunks"] == chunks for s in stored), f"chunks in answers {stored}")
    again = a.upload_chunks(space, doc, chunks=[1])[0]
    check(again["received"] == 2, f"chunk 1 sent again: {again}")
    step(2, f"A uploaded chunks 3 and 1 (1 again, safely: {again}), then its connection \"broke\"")

    e = refused("completing with chunks missing", lambda: a.complete_space(sid), 409)
    now = a.show_space(sid)
    check(now["missing"] == [0, 2] and not now["complete"], f"after the cut: {now}")
    step(3, f"complete → 409 ({e.body['error']}); the space says missing {now['missing']}")

    done = a.upload_document(doc, space=sid)  # resumes: uploads what is missing, completes
    check(a.last_status == 200, f"complete answered {a.last_status}")
    check(done["complete"] is True and done["missing"] == [], f"completed: {done}")
    again = a.complete_space(sid)
    check(again["complete"] is True, f"completing again: {again}")
    refused("a chunk after completion", lambda: a.put_chunk(sid, 0, b"x"), 409)
    step(4, "A resumed (uploaded chunks 0 and 2), completed: complete, nothing missing; "
         "completing again changes nothing; a chunk now is 409")

    # --- A sends the envelope naming it ------------------------------------
    subject = "Hồ sơ quét số 7"
    sent = a.send_space_envelope(b.code, subject, done, "application/pdf")
    mid = sent["message_id"]
    check(a.last_status == 202, f"the envelope was answered {a.last_status}: {sent}")
    check(sent.get("outcome") == "accepted" and sent.get("destinations") == [b.code], f"{sent}")
    bound = a.show_space(sid)
    check(bound.get("message_id") == mid, f"the space's message_id {bound.get('message_id')!r}")
    step(5, f"A sent envelope {mid} (empty body, lgsp-space {sid}, lgsp-digest of the document): "
         "202 accepted; the space names it")

    e = refused(
        "a second envelope naming the space",
        lambda: a.send_space_envelope(b.code, "Lần nữa", done, "application/pdf"),
        400,
        "malformed",
    )
    check(e.body.get("outcome") == "rejected", f"outcome {e.body.get('outcome')!r}")
    refused_mid = e.body.get("message_id")
    check(refused_mid and refused_mid != mid, f"refused message_id {refused_mid!r}")
    e2 = refused("deleting a space an envelope uses", lambda: a.delete_space(sid), 409)
    step(6, f"a second envelope naming the space is refused: 400 malformed ({e.body['error']}); "
         f"DELETE is 409 ({e2.body['error']})")

    # --- B receives it ------------------------------------------------------
    d = wait_delivery(b, a.code, mid)
    b.verify_delivery(d)
    h = d["headers"]
    check(d["kind"] == "envelope" and d.get("subject") == subject, f"listed {d}")
    check(d["size"] == 0, f"size {d['size']}, not 0")
    check(d.get("content_space") == sid, f"content_space {d.get('content_space')!r}, not {sid}")
    check(h.get("lgsp-content-space") == sid, f"lgsp-content-space {h.get('lgsp-content-space')!r}")
    check(h.get("lgsp-space") == sid, f"the source's lgsp-space {h.get('lgsp-space')!r}")
    check(h.get("lgsp-digest") == digest, f"lgsp-digest {h.get('lgsp-digest')!r}")
    check(d.get("content_type") == "application/pdf", f"content_type {d.get('content_type')!r}")
    body = b.fetch(d)
    check(body == b"", f"the delivery's body has {len(body)} bytes")
    seen = b.show_space(sid)
    check(seen["complete"] and seen["size"] == size and seen["owner"] == a.code, f"B sees {seen}")
    step(7, f"B listed {d['id']}: size 0, content_space {sid} (signed as lgsp-content-space); "
         "hub signature verifies; empty body; B may read the space")

    got = os.path.join(tmp, "received.pdf")
    part = b.fetch_content(d, got, stop_after=CUT_AT)
    check(part["status"] == 200 and not part["complete"], f"first part: {part}")
    check(os.path.getsize(got) == CUT_AT, f"{os.path.getsize(got)} bytes after the cut")
    rest = b.fetch_content(d, got)  # resumes with Range: bytes=<have>-
    check(rest["status"] == 206 and rest["first"] == CUT_AT, f"resumed: {rest}")
    check(rest["received"] == size - CUT_AT and rest["complete"], f"resumed: {rest}")
    check(rest["digest"] == digest and same_file(doc, got), "the fetched document differs")
    status, crange, piece = b.read_space_range(sid, MIB - 8, MIB + 7)
    with open(doc, "rb") as f:
        f.seek(MIB - 8)
        want = f.read(16)
    check(status == 206 and piece == want, f"bytes {MIB - 8}-{MIB + 7}: {status} {crange}")
    check(crange == f"bytes {MIB - 8}-{MIB + 7}/{size}", f"Content-Range {crange!r}")
    e = refused("a range past the end", lambda: b.read_space_range(sid, size), 416, json_error=False)
    step(8, f"B fetched it cut after {CUT_AT} bytes (200), resumed with Range (206 from {rest['first']}), "
         f"digest verifies; a 16-byte range across chunks is right; past the end is 416 "
         f"(Content-Range {e.headers.get('content-range')!r})")

    recorded = b.post_status(mid, "01", to=a.code)
    check(recorded.get("outcome") == "recorded", f"status: {recorded}")
    check(d["id"] in recorded.get("settled", []), f"status did not settle it: {recorded}")
    took = wait_gone(a, sid, "A")
    refused("B fetching the deleted space", lambda: b.read_space_range(sid, 0, 0), 404)
    step(9, f"B confirmed 01 (settled); the space answered 404 to A {took:.1f} s later, and to B")

    # --- a space given up ---------------------------------------------------
    small = b"given up" * 1000
    tmp_space = a.create_space(len(small), file_digest(small)[1])
    a.upload_chunks(tmp_space, small)
    a.delete_space(tmp_space["id"])
    check(a.last_status == 204, f"DELETE answered {a.last_status}, not 204")
    refused("a deleted space", lambda: a.show_space(tmp_space["id"]), 404)
    refused("a space of 0 bytes", lambda: a.create_space(0, EMPTY_DIGEST), 400)
    step(10, "A deleted a space it gave up (204, then 404); a space of 0 bytes is 400")

    # --- a large body sent inline -------------------------------------------
    annex = os.path.join(tmp, "annex.pdf")
    make_document(annex, INLINE_SIZE, b"truc spaces test: annex")
    isize, idigest = file_digest(annex)
    isubject = "Phụ lục hồ sơ số 7"
    sent2 = a.send_envelope_file(b.code, isubject, annex, "application/pdf")
    mid2 = sent2["message_id"]
    check(a.last_status == 202 and sent2.get("destinations") == [b.code], f"inline: {sent2}")
    step(11, f"A sent envelope {mid2} with a {isize}-byte body the ordinary way: 202 accepted")

    d2 = wait_delivery(b, a.code, mid2)
    b.verify_delivery(d2)
    cs = Gateway.content_space(d2)
    check(cs and SPACE_ID.fullmatch(cs), f"no content space for a {isize}-byte body: {d2}")
    check(d2["size"] == 0, f"size {d2['size']}")
    check("lgsp-space" not in d2["headers"], "the source named no space")
    check(d2["headers"].get("lgsp-digest") == idigest, "lgsp-digest is not the body's")
    check(b.fetch(d2) == b"", "the delivery's body is not empty")
    got2 = os.path.join(tmp, "annex-received.pdf")
    whole = b.fetch_content(d2, got2)
    check(whole["status"] == 200 and whole["complete"] and whole["size"] == isize, f"{whole}")
    check(same_file(annex, got2), "the fetched annex differs")
    recorded = b.post_status(mid2, "01", to=a.code)
    check(d2["id"] in recorded.get("settled", []), f"status did not settle it: {recorded}")
    took = wait_gone(b, cs, "B")
    step(12, f"B found it in the hub's space {cs} (size 0), fetched {whole['size']} bytes (200), "
         f"digest verifies, confirmed 01; the space answered 404 {took:.1f} s later")

    # --- A's notices --------------------------------------------------------
    want = {
        (mid, "accepted"), (mid, "delivered"), (refused_mid, "rejected"),
        (mid2, "accepted"), (mid2, "delivered"),
    }
    seen, kinds = {}, set()
    end = time.monotonic() + DEADLINE_S
    while not want <= kinds:
        check(time.monotonic() < end, f"A's notices: missing {sorted(want - kinds)}")
        fresh = 0
        for n in a.list_notices(wait=WAIT_S):
            if n["id"] in seen:
                continue
            fresh += 1
            a.verify_notice(n)
            seen[n["id"]] = n
            kinds.add((n["notice"].get("ref"), n["notice"].get("notice")))
        if not fresh:
            time.sleep(0.2)
    rejected = [n["notice"] for n in seen.values() if n["notice"].get("ref") == refused_mid]
    check(len(rejected) == 1 and rejected[0].get("reason") == "malformed", f"rejected: {rejected}")
    acked = a.ack_notices(list(seen))
    check(sorted(acked.get("acknowledged", [])) == sorted(seen), f"acknowledged: {acked}")
    step(13, f"A's {len(seen)} notices verify and are acknowledged; the refusal: "
         f"rejected malformed, {rejected[0].get('detail')!r}")


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="truc-spaces-") as tmp:
            run(argv[1], load_creds(argv[2]), load_creds(argv[3]), tmp)
    except CheckFailed as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    except (GatewayError, VerificationError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    except (OSError, KeyError, ValueError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
