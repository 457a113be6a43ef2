#!/usr/bin/env python3
"""A durable workflow handler in Python, written from docs/protocol.md alone (no SDK): the
replay rules of the Rust SDK, in about a hundred lines, behind an unkind server.

    python3 workflow.py --listen 127.0.0.1:9000 --error-rate 0.2 --jitter-ms 10

POST /order runs the workflow `order`: step "reserve" -> step "charge" -> sleep 300 ms ->
step "ship", and answers the shipment. Each step's result holds a random token, so a step
that ran twice would hand out two different results. Every request first waits a random
0..jitter ms, then fails with 503 (no Retry-After) for a random fraction of requests,
before touching the journal: so a step runs again only if the engine lost its result.

GET /stats answers JSON: requests, failures injected, step executions by (call, step)
(how many ran more than once), replay mismatches (a replayed result that differs from
the one the step returned when it ran), and completed workflows.
"""

import argparse
import json
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROTOCOL = "7"


class Suspend(Exception):
    def __init__(self, wait):
        super().__init__("suspended")
        self.wait = wait


class Nondeterminism(Exception):
    pass


class Run:
    """One request's replay of a workflow over its journal."""

    def __init__(self, journal, now_ms):
        self.journal = journal
        self.now_ms = now_ms
        self.position = 0
        self.new = []

    def _next(self, kind, name=None):
        if self.position < len(self.journal):
            entry = self.journal[self.position]
            if entry.get("kind") != kind or (name is not None and entry.get("name") != name):
                raise Nondeterminism(
                    f"journal entry {self.position} is {entry.get('kind')} {entry.get('name', '')}, "
                    f"but the code asks for {kind} {name or ''}"
                )
            self.position += 1
            return entry
        return None

    def step(self, name, run):
        entry = self._next("step", name)
        if entry is not None:
            if "error" in entry:
                raise RuntimeError(entry["error"])
            return entry.get("ok")
        # A second new step waits until the first one's result is stored.
        if any(e["kind"] == "step" for e in self.new):
            raise Suspend(None)
        result = run()
        self.new.append({"kind": "step", "name": name, "ok": result})
        self.position += 1
        return result

    def sleep(self, ms):
        entry = self._next("sleep")
        if entry is not None:
            if entry["wake_at"] <= self.now_ms:
                return
            raise Suspend({"any_of": [[self.position - 1]]})
        self.new.append({"kind": "sleep", "duration_ms": ms})
        self.position += 1
        raise Suspend({"any_of": [[self.position - 1]]})


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.requests = 0
        self.injected = 0
        self.executions = {}  # (call, step) -> count
        self.results = {}  # (call, step) -> result when it ran
        self.mismatches = 0
        self.completed = set()

    def ran(self, call, step, result):
        with self.lock:
            self.executions[(call, step)] = self.executions.get((call, step), 0) + 1
            self.results.setdefault((call, step), result)

    def replayed(self, call, step, result):
        with self.lock:
            known = self.results.get((call, step))
            if known is not None and known != result:
                self.mismatches += 1


def order(run, state, call, order_input):
    def step(name):
        def body():
            result = f"{name}-{order_input}-{uuid.uuid4().hex[:8]}"
            state.ran(call, name, result)
            return result

        before = run.position < len(run.journal)
        result = run.step(name, body)
        if before:
            state.replayed(call, name, result)
        return result

    reserved = step("reserve")
    charged = step("charge")
    run.sleep(300)
    shipped = step("ship")
    return {"order": order_input, "reserved": reserved, "charged": charged, "shipped": shipped}


class Handler(BaseHTTPRequestHandler):
    state = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        self.send_response(status)
        self.send_header("engine-protocol", PROTOCOL)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        self.wfile.write(body)

    def do_GET(self):
        s = self.state
        with s.lock:
            stats = {
                "requests": s.requests,
                "injected": s.injected,
                "steps_run": len(s.executions),
                "steps_run_twice": sum(1 for n in s.executions.values() if n > 1),
                "mismatches": s.mismatches,
                "completed": len(s.completed),
            }
        self.answer(200, json.dumps(stats).encode(), [("Content-Type", "application/json")])

    def do_POST(self):
        s, args = self.state, self.state.args
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with s.lock:
            s.requests += 1
        time.sleep(random.uniform(0, args.jitter_ms) / 1000.0)
        if random.random() < args.error_rate:
            with s.lock:
                s.injected += 1
            return self.answer(503, b"random failure\n")
        call = self.headers.get("engine-call-id", "")
        journal_bytes = int(self.headers.get("engine-journal-bytes", "0"))
        journal = json.loads(body[:journal_bytes]) if journal_bytes else []
        order_input = json.loads(body[journal_bytes:])
        now_ms = int(self.headers.get("engine-now", str(int(time.time() * 1000))))
        run = Run(journal, now_ms)
        try:
            output = order(run, s, call, order_input)
        except Suspend as suspend:
            answer = {"from": len(journal), "entries": run.new, "wait": suspend.wait}
            return self.answer(202, json.dumps(answer).encode(), [("engine-workflow", "suspended")])
        except Nondeterminism as e:
            return self.answer(409, f"{e}\n".encode(), [("engine-workflow", "nondeterminism")])
        with s.lock:
            s.completed.add(call)
        self.answer(200, json.dumps(output).encode(), [("Content-Type", "application/json")])


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser(description="A durable workflow handler in Python")
    parser.add_argument("--listen", default="127.0.0.1:9000")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Handler.state = State(args)
    server = Server((host, int(port)), Handler)
    print(f"workflow handler on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
