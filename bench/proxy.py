"""The project's fault-injecting S3 proxy (examples/fault_proxy.rs) as the benchmark uses it: a
round trip added to every request, or 503 SlowDown above a request rate, in front of a real
server; and the proxy's record of every request, read back after each run.

The proxy runs as its own process on 127.0.0.1 (a free port for S3, another for its control API)
and forwards to the bed's server; `run.sh` builds it with `cargo build --release --example
fault_proxy`. Its rules, as JSON (see tests/common/fault_proxy/rules.rs):

- a round trip: `{"action": {"Delay": {"ms": 10}}}` on every request (half before forwarding,
  half after the answer's head);
- throttling: `{"ops": [...], "when": {"RateAbove": {"per_second": R}}, "action": {"Error":
  {"status": 503, "code": "SlowDown", ...}}}`, a token bucket of R per second holding one
  second's worth. Only the first rule that fires applies to a request: a throttled answer is
  sent at once, without the added round trip.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import benchlib as b

SLOW_DOWN = {
    "status": 503,
    "code": "SlowDown",
    "message": "Please reduce your request rate.",
}


def delay_rules(ms: int) -> list[dict]:
    """Every request `ms` slower; no rule at all for 0 (the proxy alone)."""
    return [{"action": {"Delay": {"ms": ms}}}] if ms else []


def throttle_rules(per_second: float, ops: list[str], delay_ms: int) -> list[dict]:
    """503 SlowDown for requests of `ops` (all when empty) above `per_second`."""
    throttle = {
        "ops": ops,
        "when": {"RateAbove": {"per_second": per_second}},
        "action": {"Error": SLOW_DOWN},
    }
    return [throttle, *delay_rules(delay_ms)]


class Proxy:
    """One fault_proxy process in front of `upstream`; stop() (or the context manager) ends it."""

    def __init__(self, upstream: str, log_path: Path):
        self.upstream = upstream
        control_port = b.free_port()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [
                str(b.FAULT_PROXY), "--upstream", upstream, "--listen", "127.0.0.1:0",
                "--control", f"127.0.0.1:{control_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )  # fmt: skip
        self.endpoint = "http://" + self._read_address("listening on ")
        self.control = "http://" + self._read_address("control API on ")
        b.log(f"fault proxy at {self.endpoint} in front of {upstream} (control {self.control})")

    def _read_address(self, prefix: str) -> str:
        line = self.proc.stdout.readline().strip()
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"fault proxy: expected {prefix!r}, got {line!r}")
        return line[len(prefix) :]

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.control + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.read()

    def set_rules(self, rules: list[dict]) -> None:
        self._call("PUT", "/rules", json.dumps(rules).encode())

    def reset(self) -> None:
        """Forgets the records and counts (the rules stay)."""
        self._call("POST", "/reset")

    def records(self) -> list[dict]:
        text = self._call("GET", "/records").decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stats(self) -> dict:
        return json.loads(self._call("GET", "/stats"))

    def clock_offset(self) -> float:
        """Wall-clock epoch seconds minus the proxy's record clock, from one request through it.

        Call right after reset(): the request is record 0 of the run (an unsigned ListBuckets,
        which the server refuses; the answer does not matter, its timing does).
        """
        before = time.time()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(self.endpoint + "/", timeout=10).read()
        after = time.time()
        first = self.records()[0]
        proxy_mid = (first["started"] + (first["finished"] or first["started"])) / 2
        return (before + after) / 2 - proxy_mid

    def cpu_seconds(self) -> float:
        return b.pid_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
