#!/usr/bin/env python3
"""An unkind HTTP target, the way real services behave: a threaded Python server with
jittery latency, random 5xx answers, a capacity above which it refuses, latency that grows
with load, and behaviour that changes over time.

    python3 unkind.py --listen 127.0.0.1:9000 --error-rate 0.2 --latency-ms 20 --jitter exp:10

Options (all optional):
  --error-rate F         answer --error-status to a random fraction F of requests
  --error-status N       500 or 503 (default 503); never with Retry-After
  --latency-ms B         base latency in ms
  --jitter exp:M         add an exponential tail of mean M ms
  --jitter heavy:R       multiply by a log-normal factor whose p99 is R times its median
  --capacity C           answer 429 above C requests in flight (0: no limit)
  --retry-after S        send Retry-After: S with each 429
  --per-flight-ms K      add K ms per request in flight (a saturating service)
  --phases SPEC          capacities over time from the first request, e.g. "0:0,10:8,20:0"
                         (seconds:capacity; 0 is no limit)
  --echo                 answer a success with "done:" and the request's body (default "ok")

GET /stats answers JSON: requests, ok, errors, refused, max_in_flight, the p50 and p99 of
the latency it served (ms, refusals excepted; over the whole run and after its first 5 s), unique calls that succeeded, duplicate successes, per-key order violations (successful payloads of one key
out of order), key overlaps (two requests of one key in flight at once), and per-100-ms
counts of successes since the first request.
"""

import argparse
import json
import math
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.requests = self.ok = self.errors = self.refused = 0
        self.in_flight = self.max_in_flight = 0
        self.succeeded = set()
        self.duplicates = 0
        self.last_seq = {}
        self.order_violations = 0
        self.keys_in_flight = set()
        self.overlaps = 0
        self.started = None
        self.ok_per_tick = []
        self.served_ms = []
        self.served_ms_settled = []
        self.phases = parse_phases(args.phases) if args.phases else None

    def capacity(self, now):
        if self.phases is None or self.started is None:
            return self.args.capacity
        elapsed = now - self.started
        current = self.args.capacity
        for at, capacity in self.phases:
            if elapsed >= at:
                current = capacity
        return current


def percentiles(values):
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0, "p99": 0}
    rank = lambda q: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
    return {"p50": rank(0.5), "p99": rank(0.99)}


def parse_phases(spec):
    phases = []
    for part in spec.split(","):
        at, capacity = part.split(":")
        phases.append((float(at), int(capacity)))
    return sorted(phases)


def jittered(args):
    latency = args.latency_ms
    kind, _, value = (args.jitter or "").partition(":")
    if kind == "exp":
        latency += random.expovariate(1.0 / float(value))
    elif kind == "heavy":
        sigma = math.log(float(value)) / 2.326
        latency *= math.exp(random.gauss(0.0, sigma))
    elif kind:
        sys.exit(f"unknown --jitter {args.jitter!r}: use exp:MEAN or heavy:RATIO")
    return latency


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm and delayed
    # ACKs add 40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    state = None

    def log_message(self, *_):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        s = self.state
        with s.lock:
            stats = {
                "requests": s.requests,
                "ok": s.ok,
                "errors": s.errors,
                "refused": s.refused,
                "in_flight": s.in_flight,
                "max_in_flight": s.max_in_flight,
                "unique_ok": len(s.succeeded),
                "duplicates": s.duplicates,
                "order_violations": s.order_violations,
                "key_overlaps": s.overlaps,
                "served_ms": percentiles(s.served_ms),
                "served_ms_after_5s": percentiles(s.served_ms_settled),
                "tick_ms": 100,
                "ok_per_tick": list(s.ok_per_tick),
            }
        self.answer(200, json.dumps(stats).encode(), [("Content-Type", "application/json")])

    def do_POST(self):
        s, args = self.state, self.state.args
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("engine-kafka-key")
        call = self.headers.get("engine-call-id", "")
        now = time.monotonic()
        with s.lock:
            if s.started is None:
                s.started = now
            s.requests += 1
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            in_flight = s.in_flight
            capacity = s.capacity(now)
            overlapping = key is not None and key in s.keys_in_flight
            if overlapping:
                s.overlaps += 1
            elif key is not None:
                s.keys_in_flight.add(key)
        reply = self.work(in_flight, capacity, call, key, body)
        # Leave before answering: the engine may send this key's next call as soon as it
        # reads the answer.
        with s.lock:
            s.in_flight -= 1
            if key is not None and not overlapping:
                s.keys_in_flight.discard(key)
        self.answer(*reply)

    def work(self, in_flight, capacity, call, key, body):
        s, args = self.state, self.state.args
        if capacity and in_flight > capacity:
            with s.lock:
                s.refused += 1
            headers = [("Retry-After", str(args.retry_after))] if args.retry_after is not None else []
            return 429, b"over capacity\n", headers
        latency = max(jittered(args) + args.per_flight_ms * in_flight, 0.0)
        time.sleep(latency / 1000.0)
        with s.lock:
            s.served_ms.append(latency)
            if time.monotonic() - s.started >= 5.0:
                s.served_ms_settled.append(latency)
        if random.random() < args.error_rate:
            with s.lock:
                s.errors += 1
            return args.error_status, b"random failure\n", []
        self.record_success(call, key, body)
        return 200, (b"done:" + body if args.echo else b"ok\n"), []

    def record_success(self, call, key, body):
        s = self.state
        with s.lock:
            s.ok += 1
            tick = int((time.monotonic() - s.started) * 10)
            while len(s.ok_per_tick) <= tick:
                s.ok_per_tick.append(0)
            s.ok_per_tick[tick] += 1
            if call in s.succeeded:
                s.duplicates += 1
                return
            s.succeeded.add(call)
            if key is not None:
                try:
                    seq = int(body.split(b":")[-1])
                except ValueError:
                    return
                if seq < s.last_seq.get(key, -1):
                    s.order_violations += 1
                s.last_seq[key] = seq


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer (an engine killed by a test) is expected.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description="An unkind HTTP target")
    parser.add_argument("--listen", default="127.0.0.1:9000")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter")
    parser.add_argument("--capacity", type=int, default=0)
    parser.add_argument("--retry-after", type=int)
    parser.add_argument("--per-flight-ms", type=float, default=0.0)
    parser.add_argument("--phases")
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.state = State(args)
    server = Server((host, int(port)), Handler)
    print(f"unkind target on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
