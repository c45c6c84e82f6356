#!/usr/bin/env python3
"""`meterline api` driven by two real clients against the real broker.

A Python client (urllib, the standard library) and curl submit 10,000 events in
batches of 100; 1% of the events are invalid, so the batches holding them are
refused whole (400, each bad index named with validate's code) and sent again
without them, as a client would; 2% of the batches are first sent with a
client timeout too short to see the answer (the server may or may not have
produced them) and then sent again. With validate and dedupe running,
usage.validated must hold each valid event exactly once.

Run by deploy/local/api-fuzz (the test command); standalone:

    tests/api_clients.py --bin target/debug/meterline --bootstrap 127.0.0.1:9092
"""

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

EVENTS = 10_000
BATCH = 100
INVALID_EVERY = 100  # 1% of the events
TIMEOUT_EVERY = 50  # 2% of the batches
CURL_EVERY = 4  # every 4th batch goes through curl
SEED = 11
FORCED_TIMEOUT_S = 0.05  # the client gives up this soon after sending
WAIT_S = 180


def fail(msg):
    print(f"api_clients: FAIL {msg}", file=sys.stderr)
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def event(i, now):
    e = {
        "specversion": "1.0",
        "id": f"py-{i}",
        "source": "clients/test",
        "type": "llm.tokens",
        "subject": f"cust-{i % 13}",
        "time": now,
        "data": {"tokens": str(100 + i), "model": "m1"},
    }
    if i % INVALID_EVERY == 7:
        e["data"]["tokens"] = "many"  # value_not_numeric
    return e


def post_urllib(url, token, body, timeout):
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/cloudevents-batch+json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post_curl(url, token, body):
    out = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", url,
         "-H", f"Authorization: Bearer {token}",
         "-H", "Content-Type: application/cloudevents-batch+json",
         "--data-binary", "@-"],
        input=body, capture_output=True, check=True)
    text = out.stdout.decode()
    body_text, _, code = text.rpartition("\n")
    return int(code), body_text


def send_and_hang_up(url, token, body):
    """A client that times out: sends the whole request, gives up before the
    answer and closes the connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/cloudevents-batch+json\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head.encode() + body)
        time.sleep(FORCED_TIMEOUT_S)


def submit(url, token, batch_no, events):
    """Sends one batch until accepted; returns the number of forced timeouts."""
    post = (lambda b: post_curl(url, token, b)) if batch_no % CURL_EVERY == 0 \
        else (lambda b: post_urllib(url, token, b, 30))
    timeouts = 0
    if batch_no % TIMEOUT_EVERY == 1:
        # Only the valid events: this attempt must land, so the resend is a
        # real duplicate for dedupe to drop.
        valid = [e for e in events if e["data"]["tokens"] != "many"]
        send_and_hang_up(url, token, json.dumps(valid).encode())
        timeouts = 1
    status, text = post(json.dumps(events).encode())
    if status == 400:
        problem = json.loads(text)
        bad = {e["index"]: e["code"] for e in problem.get("errors", [])}
        want = {i: "value_not_numeric" for i, e in enumerate(events)
                if e["data"]["tokens"] == "many"}
        if problem.get("code") != "invalid_events" or bad != want:
            fail(f"batch {batch_no}: refused with {problem}, expected indexes {want}")
        events = [e for i, e in enumerate(events) if i not in bad]
        status, text = post(json.dumps(events).encode())
    if status != 204:
        fail(f"batch {batch_no}: HTTP {status}: {text}")
    return timeouts


def counts(bin_, config):
    out = subprocess.run([bin_, "--config", config, "topology", "counts"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}


def wait_http(url):
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    fail(f"{url} never answered 200")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bootstrap", default=os.environ.get("METERLINE_TEST_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    random.seed(SEED)
    token = "mtl_clients_" + "".join(random.choice("0123456789abcdef") for _ in range(32))
    port = free_port()
    ns = f"clients.{os.getpid()}.{int(time.time())}."
    work = tempfile.mkdtemp()
    config = os.path.join(work, "meterline.toml")
    with open(config, "w") as f:
        f.write(f"""[kafka]
bootstrap_servers = "{args.bootstrap}"
[topology]
topics_file = "{args.repo}/topology/topics.toml"
meters_file = "{args.repo}/topology/meters.toml"
schemas_dir = "{args.repo}/schemas"
namespace = "{ns}"
[runtime]
state_dir = "{work}/state"
[http]
listen_addr = ""
[api]
listen_addr = "127.0.0.1:{port}"
[[api.keys]]
name = "clients"
sha256_hex = "{hashlib.sha256(token.encode()).hexdigest()}"
scopes = ["ingest"]
""")
    env = dict(os.environ, METERLINE_LOG="warn")
    subprocess.run([args.bin, "--config", config, "topology", "apply"], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    procs = [subprocess.Popen([args.bin, "--config", config, "api"], env=env),
             subprocess.Popen([args.bin, "--config", config, "run", "--stage", "validate",
                               "--stage", "dedupe"], env=env, cwd=work)]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events = [event(i, now) for i in range(EVENTS)]
        valid = sum(1 for e in events if e["data"]["tokens"] != "many")
        url = f"http://127.0.0.1:{port}/api/v1/events"
        timeouts = 0
        for b in range(EVENTS // BATCH):
            timeouts += submit(url, token, b, events[b * BATCH:(b + 1) * BATCH])
        deadline = time.time() + WAIT_S
        topic = f"{ns}usage.validated"
        while time.time() < deadline and counts(args.bin, config).get(topic, 0) < valid:
            time.sleep(1)
        time.sleep(3)  # anything extra (a duplicate) would land by now
        c = counts(args.bin, config)
        if c.get(topic) != valid:
            fail(f"usage.validated holds {c.get(topic)}, expected each of the {valid} valid events once")
        if c.get(f"{ns}usage.events", 0) <= valid:
            fail(f"usage.events holds {c.get(ns + 'usage.events')}: no resent batch landed twice, so dedupe was not exercised")
        if c.get(f"{ns}meterline.dlq.validate") != 0:
            fail(f"validate dead-lettered {c.get(f'{ns}meterline.dlq.validate')}: the API let an invalid event through")
        print(f"api_clients: ok: {EVENTS} events ({EVENTS - valid} invalid refused by index), "
              f"{timeouts} batches resent after a forced timeout, curl and urllib; "
              f"usage.validated holds each of the {valid} valid events once "
              f"(usage.events: {c.get(ns + 'usage.events')} records)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
