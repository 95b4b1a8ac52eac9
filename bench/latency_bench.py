"""Round-trip time and throttling: the tools run through the project's fault proxy, which adds a
fixed delay to every request (0, 10, 40 ms by default) or answers 503 SlowDown above a request
rate, in front of the same servers as the direct comparison.

What is planned here: which bucket each run gets (a Job), and how a run reaches its server (a
Route: direct, or through the server's proxy with that run's rules). bench.py fills the buckets
and runs the jobs; what the proxy saw of each run is read back with `proxy_figures`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
from pathlib import Path

import benchlib as b
import flight
import proxy as p
import tools as t

DIRECT = "direct"
THROTTLE = "throttle"


@dataclasses.dataclass(frozen=True)
class Job:
    """One tool run on its own bucket of `n` stale uploads."""

    phase: str  # compare, latency, throttle
    tool: str
    n: int
    # "direct", a delay in ms added by the proxy ("0", "10", "40"), or "throttle".
    setting: str = DIRECT


def compare_jobs(cfg: b.Config, server: str, ns: list[int]) -> dict[str, Job]:
    return {f"cmp-{server}-{n}-{tool}": Job("compare", tool, n) for n in ns for tool in cfg.tools}


def latency_jobs(cfg: b.Config, server: str, n: int) -> list[dict[str, Job]]:
    """Groups of two routes (8 buckets with the default tools), route-major: the runs compared
    with each other run close together in time."""
    groups = []
    for i in range(0, len(cfg.delays), 2):
        groups.append({
            f"rtt-{server}-{n}-{setting}-{tool}": Job("latency", tool, n, setting)
            for setting in cfg.delays[i : i + 2]
            for tool in cfg.delay_tools
        })  # fmt: skip
    return groups


def throttle_jobs(cfg: b.Config, server: str) -> dict[str, Job]:
    return {
        f"thr-{server}-{tool}": Job("throttle", tool, cfg.throttle_n, THROTTLE)
        for tool in cfg.throttle_tools
    }


@dataclasses.dataclass
class Route:
    """How a run reaches the server: `server` is the server as the tool sees it."""

    server: b.Server
    proxy: p.Proxy | None = None
    delay_ms: int | None = None
    throttle: dict | None = None

    def describe(self) -> dict:
        return {
            "route": self.server.route,
            "delay_ms": self.delay_ms,
            "throttle_rule": self.throttle,
        }


class Routes:
    """A proxy per server, started when a run first needs it and stopped by close()."""

    def __init__(self, cfg: b.Config):
        self.cfg = cfg
        self.proxies: dict[str, tuple[p.Proxy, b.Server]] = {}
        self.stack = contextlib.ExitStack()

    def close(self) -> None:
        self.stack.close()

    def _proxied(self, server: b.Server) -> tuple[p.Proxy, b.Server]:
        if server.name not in self.proxies:
            log = b.WORK / "logs" / f"fault-proxy-{server.name}.log"
            proxy = self.stack.enter_context(p.Proxy(server.endpoint, log))
            seen = dataclasses.replace(server, endpoint=proxy.endpoint, route="proxy")
            t.write_configs(seen)
            self.proxies[server.name] = (proxy, seen)
        return self.proxies[server.name]

    def route(self, server: b.Server, setting: str) -> Route | None:
        """The route for a job's setting, with the proxy's rules set for it; None for direct."""
        if setting == DIRECT:
            return None
        proxy, seen = self._proxied(server)
        if setting == THROTTLE:
            c = self.cfg
            rules = p.throttle_rules(c.throttle_rate, c.throttle_ops, c.throttle_delay)
            proxy.set_rules(rules)
            rule = {"per_second": c.throttle_rate, "ops": c.throttle_ops}
            return Route(seen, proxy, c.throttle_delay, rule)
        proxy.set_rules(p.delay_rules(int(setting)))
        return Route(seen, proxy, int(setting))


def proxy_figures(route: Route, m: b.Measured, offset: float, cpu_before: float, name: str) -> dict:
    """What the proxy saw of the run; its raw records go to WORK/records/NAME.jsonl.gz."""
    records = flight.shift(route.proxy.records(), offset, m.started_at)
    _save_records(records, b.WORK / "records" / f"{name}.jsonl.gz")
    out = {
        "proxy_cpu_s": round(route.proxy.cpu_seconds() - cpu_before, 2),
        "proxy": flight.summary(records),
    }
    if route.throttle:
        rule = route.throttle
        out["throttle"] = flight.throttling(records, rule["ops"], rule["per_second"])
    return out


def _save_records(records: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def log_figures(run: dict) -> None:
    fig = run.get("proxy")
    if not fig:
        return
    line = (
        f"  proxy: {fig['requests']} requests, in flight settled {fig['inflight_settled']}"
        f" (peak {fig['inflight_peak']}), 503s {fig['throttled']}, proxy CPU {run['proxy_cpu_s']} s"
    )
    thr = run.get("throttle")
    if thr and thr.get("late_requests"):
        line += (
            f"; after {flight.WARMUP_S:.0f} s: accepted {thr['late_accepted_per_s']}/s"
            f" ({thr['late_accepted_share_of_limit']:.0%} of the limit),"
            f" throttled {thr['late_throttled_share']:.1%}"
        )
    b.log(line)
