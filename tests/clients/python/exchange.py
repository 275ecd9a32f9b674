#!/usr/bin/env python3
"""A full exchange between two HTTPS-only agencies through the truc gateway,
with the client of truc_gateway.py (written from docs/openapi.json and
docs/PROTOCOL.md only).

    python3 exchange.py GATEWAY_ADDR CREDS_A.json CREDS_B.json

Each credentials file is JSON with ``code``, ``access_key`` and ``secret``
(other fields are ignored). Prints one line per step; exits 0 only if every
check passes, 1 at the first that fails (2 on bad arguments).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from truc_gateway import (  # noqa: E402
    Gateway,
    GatewayError,
    VerificationError,
    body_digest,
    canonical,
    hmac_sha256_b64,
)

SUBJECT = "Công văn số 7"
BODY = "Xin chào".encode("utf-8")
CONTENT_TYPE = "text/plain; charset=utf-8"
WAIT_S = 10
DEADLINE_S = 60


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def step(n, text):
    print(f"ok {n:2d} {text}", flush=True)


def load_creds(path):
    with open(path, encoding="utf-8") as f:
        v = json.load(f)
    return {k: v[k] for k in ("code", "access_key", "secret")} | (
        {"previous_keys": v["previous_keys"]} if v.get("previous_keys") else {}
    )


def vectors():
    """The signing code against the worked examples of PROTOCOL.md §2.7, §4.3, §6.5, §8.5."""
    check(
        body_digest("Xin chào, Sở Y tế!".encode())
        == "sha256=a305c238ea36409c4e37fb0b33b962dcee6636d15ea5285b34756b5a21431ab3",
        "digest of §2.7",
    )
    headers = {
        "lgsp-version": "1",
        "lgsp-from": "000.00.31.H41",
        "lgsp-key": "AK3F9Q2ZLMXW",
        "lgsp-alg": "hmac-sha256",
        "lgsp-time": "2026-11-22T08:00:00Z",
        "lgsp-nonce": "b3c1d2e4f5a6978812345678",
        "lgsp-to": "000.00.32.H41,000.00.33.H41",
        "lgsp-subject": "Công văn số 12/SYT-VP",
        "lgsp-priority": "1",
        "lgsp-type": "edoc",
        "lgsp-bounce-after": "4h",
        "lgsp-digest": "sha256=a305c238ea36409c4e37fb0b33b962dcee6636d15ea5285b34756b5a21431ab3",
    }
    mid, ct = "01JD0000000000000000000001", "application/edxml+xml"
    sig = hmac_sha256_b64(
        "s3cr3t-demo-key-please-rotate",
        canonical("envelope.000.00.31.H41", mid, ct, headers),
    )
    check(sig == "UleTPnsaHshzCTxkn3aX4wSXe9UJF+Tj5PTCXaLDtag=", f"signature of §4.3: {sig}")
    headers["lgsp-signature"] = sig
    headers["lgsp-dest"] = "000.00.32.H41"
    headers["lgsp-accepted-at"] = "2026-11-22T08:00:01.000Z"
    headers["lgsp-attempt"] = "1"
    hub = hmac_sha256_b64(
        "dest-secret-for-example-only",
        canonical("deliver.000.00.32.H41", mid, ct, headers),
    )
    check(hub == "08YfrZ0Z/0y6JHFEeo174waB8udY0RwivyvWrfA7VZg=", f"hub signature of §6.5: {hub}")
    # §8.5: the accepted notice's digest and hub signature.
    text = (
        '{"notice":"accepted","ref":"01JD0000000000000000000001","source":"000.00.31.H41",'
        '"detail":"","destinations":["000.00.32.H41"],"at":"2026-11-22T08:00:01.000Z"}'
    )
    digest = body_digest(text.encode("utf-8"))
    check(
        digest == "sha256=f6ebb984a40896f994ca801b1028934eeaf57ab43284ba7235f1cd6dc564b3dc",
        f"notice digest of §8.5: {digest}",
    )
    notice_headers = {
        "lgsp-version": "1",
        "lgsp-notice": "accepted",
        "lgsp-ref": mid,
        "lgsp-to": "000.00.31.H41",
        "lgsp-time": "2026-11-22T08:00:01.000Z",
        "lgsp-digest": digest,
        "lgsp-hub-key": "AK3F9Q2ZLMXW",
    }
    sig = hmac_sha256_b64(
        "s3cr3t-demo-key-please-rotate",
        canonical(
            "notice.000.00.31.H41",
            "n01a20244ebe83f9c0d2a6b1e4758",
            "application/json",
            notice_headers,
        ),
    )
    check(sig == "doaGTGTrcetQOtDgbN+E3SynRkQtei7hbqgiKKepScc=", f"notice signature of §8.5: {sig}")


def run(addr, creds_a, creds_b):
    vectors()
    step(0, "signing matches the worked examples of PROTOCOL.md §2.7, §4.3, §6.5, §8.5")

    a = Gateway(addr, creds_a)
    b = Gateway(addr, creds_b)

    granted = a.open_session()
    check(a.last_status == 201, f"A's session answered {a.last_status}, not 201")
    check(granted.get("agency") == a.code, f"A's session is for {granted.get('agency')}")
    check(bool(granted.get("token")), "A's session has no token")
    step(1, f"A ({a.code}) opened a session, expires in {granted.get('expires_in_s')} s")

    sent = a.send_envelope(b.code, SUBJECT, BODY, CONTENT_TYPE)
    mid = sent["message_id"]
    check(a.last_status == 202, f"the envelope was answered {a.last_status}, not 202: {sent}")
    check(sent.get("outcome") == "accepted", f"outcome {sent.get('outcome')!r}: {sent}")
    check(sent.get("destinations") == [b.code], f"destinations {sent.get('destinations')}")
    check(not sent.get("bounced"), f"bounced {sent.get('bounced')}")
    step(2, f"A sent envelope {mid} to B ({b.code}): 202 accepted, destinations {sent['destinations']}")

    b.open_session()
    check(b.last_status == 201, f"B's session answered {b.last_status}, not 201")
    step(3, f"B ({b.code}) opened a session")

    end = time.monotonic() + DEADLINE_S
    delivery = None
    while delivery is None:
        check(time.monotonic() < end, f"envelope {mid} not listed for B within {DEADLINE_S} s")
        for d in b.list_deliveries(wait=WAIT_S):
            if d.get("message_id") == mid and d.get("from") == a.code:
                delivery = d
    check(delivery["id"] == f"{a.code}/{mid}", f"delivery id {delivery['id']!r}")
    check(delivery["kind"] == "envelope", f"delivery kind {delivery['kind']!r}")
    check(delivery.get("subject") == SUBJECT, f"listed subject {delivery.get('subject')!r}")
    check(delivery["headers"].get("lgsp-subject") == SUBJECT, "signed lgsp-subject differs")
    check(delivery.get("content_type") == CONTENT_TYPE, f"content_type {delivery.get('content_type')!r}")
    check(delivery["size"] == len(BODY), f"size {delivery['size']}, not {len(BODY)}")
    check(delivery["headers"].get("lgsp-dest") == b.code, "lgsp-dest is not B")
    step(4, f"B listed delivery {delivery['id']} (attempt {delivery['attempt']}, {delivery['size']} bytes)")

    body = b.fetch(delivery)  # verifies the hub signature and the digest
    check(body == BODY, f"fetched body {body!r}, not {BODY!r}")
    step(5, f"B fetched it: hub signature (deliver.{b.code}) and digest verify, body {body.decode()!r}")

    recorded = b.post_status(mid, "01", to=a.code)
    check(b.last_status == 200, f"status answered {b.last_status}, not 200")
    check(recorded.get("outcome") == "recorded", f"status outcome: {recorded}")
    check(delivery["id"] in recorded.get("settled", []), f"status did not settle it: {recorded}")
    step(6, f"B posted status 01 to A: recorded, settled {recorded['settled']}")

    left = b.list_deliveries(wait=0)
    check(left == [], f"B still holds deliveries: {[d['id'] for d in left]}")
    step(7, "B lists again: nothing held")

    seen = {}
    kinds = set()
    end = time.monotonic() + DEADLINE_S
    while not {"accepted", "delivered", "status"} <= kinds:
        check(
            time.monotonic() < end,
            f"A got only {sorted(kinds)} about {mid} within {DEADLINE_S} s",
        )
        fresh = 0
        for n in a.list_notices(wait=WAIT_S):
            if n["id"] in seen:
                continue
            fresh += 1
            a.verify_notice(n)
            seen[n["id"]] = n
            if n["notice"].get("ref") == mid:
                check(n["headers"].get("lgsp-ref") == mid, f"notice {n['id']}: lgsp-ref differs")
                kinds.add(n["notice"].get("notice"))
        if not fresh:
            # A listing changes nothing, and `wait` only waits while none is
            # held: do not spin on the same held notices.
            time.sleep(0.2)
    about = [n for n in seen.values() if n["notice"].get("ref") == mid]
    for n in about:
        if n["notice"]["notice"] in ("delivered", "status"):
            check(n["notice"].get("dest") == b.code, f"notice {n['id']}: dest {n['notice'].get('dest')}")
            check(n["notice"].get("status") == "01", f"notice {n['id']}: status {n['notice'].get('status')}")
    step(8, "A's notices about it verify (hub signature, digest): "
         + ", ".join(f"{n['notice']['notice']} {n['id']}" for n in about))

    ids = list(seen)
    acked = a.ack_notices(ids)
    check(sorted(acked.get("acknowledged", [])) == sorted(ids), f"acknowledged: {acked}")
    check(acked.get("not_held") == [], f"not held: {acked}")
    step(9, f"A acknowledged {len(ids)} notices by id")

    again = {n["id"] for n in a.list_notices(wait=0)}
    check(not again & set(ids), f"acknowledged notices listed again: {sorted(again & set(ids))}")
    step(10, "A lists notices again: the acknowledged ones are gone")

    old = a.token
    renewed = a.renew()
    check(a.last_status == 201, f"renew answered {a.last_status}, not 201")
    check(renewed.get("token") and renewed["token"] != old, "renew gave no new token")
    info = a.show_session()
    check(info.get("agency") == a.code, f"GET /v1/session with the new token: {info}")
    step(11, f"A renewed its session; the new token works (agency {info['agency']}, expires {info['expires_at']})")

    good = a.token
    a.token = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    try:
        a.show_session()
    except GatewayError as e:
        check(e.status == 401, f"an altered token was answered {e.status}, not 401")
        check(isinstance(e.body, dict) and e.body.get("error"), f"no JSON error: {e.raw!r}")
        refused = e
    else:
        raise CheckFailed("an altered token was accepted")
    finally:
        a.token = good
    step(12, f"an altered token is refused: {refused}")


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        run(argv[1], load_creds(argv[2]), load_creds(argv[3]))
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
