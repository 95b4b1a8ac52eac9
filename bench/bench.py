"""The benchmark run: comparison with the peers, mpu-sweeper's concurrency curve on Ceph (the
server's ceiling), mpu-sweeper's memory against the number of uploads, and the operator.

    python bench.py S3_ENV_FILE [KUBE_ENV_FILE]

Run through bench/run.sh, which installs the tools, builds mpu-sweeper and starts the beds.
Writes results.json as it goes (a run that dies keeps what it measured), then results.md and
the chart (report.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time

import benchlib as b
import flight
import latency_bench as lb
import operator_bench
import report
import tools as t


def parse_summary(stdout: str):
    try:
        return json.loads(stdout)
    except ValueError:
        return None


def run_record(phase, tool, inv, n, cap, m: b.Measured, check: b.Check, server_cpu) -> dict:
    ok = check.correct and not m.capped and m.exit_code == 0
    return {
        "phase": phase,
        "server": inv.server.name,
        "n": n,
        "fresh": check.fresh_total,
        "tool": tool.name,
        "concurrency": inv.concurrency,
        "max_age_s": inv.max_age,
        "cutoff": inv.cutoff_iso,
        "wall_s": round(m.wall, 3),
        "aborted": check.aborted,
        "stale_left": check.stale_left,
        "fresh_missing": check.fresh_missing,
        "correct": ok,
        "capped": m.capped,
        "cap_s": round(cap, 1),
        "exit_code": m.exit_code,
        "peak_rss_kb": m.peak_rss_kb,
        # CPU seconds of the tool and of the server during the run: on 2 cores they compete.
        "tool_cpu_s": m.cpu_s,
        "server_cpu_s": server_cpu,
        "rate": round(check.aborted / m.wall, 2),
        # An unfinished run's projection: its own measured pace, over the whole set.
        "projected_s": round(m.wall * n / check.aborted, 1)
        if check.aborted and check.stale_left
        else None,
        "summary": parse_summary(m.stdout) if tool.name.startswith("mpu-sweeper") else None,
        "stderr_tail": "" if ok else m.stderr_tail,
    }


def log_run(run: dict) -> None:
    b.log(
        f"  -> {run['wall_s']:.1f} s, aborted {run['aborted']}/{run['n']} ({run['rate']}/s), stale"
        f" left {run['stale_left']}, fresh missing {run['fresh_missing']}, exit {run['exit_code']},"
        f" capped {run['capped']}, peak RSS {run['peak_rss_kb']} kB, CPU tool {run['tool_cpu_s']} s"
        f" server {run['server_cpu_s']:.1f} s"
    )


class Bench:
    def __init__(self, cfg: b.Config, s3_env: dict[str, str], kube_env: dict[str, str] | None):
        self.cfg = cfg
        self.kube_env = kube_env
        self.servers = b.servers_from_env(s3_env)
        self.routes = lb.Routes(cfg)
        self.results_path = cfg.results_dir / "results.json"
        config = dataclasses.asdict(cfg)
        config["skip"] = sorted(cfg.skip)
        config["results_dir"] = str(cfg.results_dir)
        self.data = {
            "meta": {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "uptime_start": b.uptime(),
                "machine": b.machine(),
                "config": config,
            },
            "runs": [],
            "operator": None,
        }
        for server in self.servers.values():
            t.write_configs(server)
        self.data["meta"]["versions"] = t.versions(t.peer_env(self.servers["ceph"]))
        self.save()

    def save(self) -> None:
        b.write_json(self.results_path, self.data)

    def fill(self, server: b.Server, sizes: dict[str, int], parts: int) -> b.Dataset:
        return b.fill_stale(self.cfg, server, {k: b.stale_keys(n) for k, n in sizes.items()}, parts)

    def fill_fresh(self, ds: b.Dataset, min_gap: float) -> None:
        b.fill_fresh(self.cfg, ds, {k: b.fresh_keys(self.cfg.fresh) for k in ds.stale}, min_gap)

    # ----------------------------------------------------------------------------------------

    def cap_for(self, phase: str, tool: t.Tool, ds: b.Dataset, bucket: str) -> float:
        cap = self.cfg.loop_cap if tool.per_upload_process else self.cfg.cap
        if phase == "memory":
            cap = self.cfg.memory_cap
        if tool.kind == "duration" and ds.fresh.get(bucket):
            # Past this, the tool's sliding cutoff would reach the fresh uploads (SeaweedFS only).
            cap = min(cap, ds.cutoff.safe_duration())
        return cap

    def run_tool(
        self, phase: str, tool: t.Tool, ds: b.Dataset, bucket: str, concurrency=None, route=None
    ) -> dict:
        """One measured run; `route` (latency_bench.Route) puts the fault proxy in between."""
        server = ds.server
        inv = t.invocation(route.server if route else server, bucket, ds.cutoff, concurrency)
        cap = self.cap_for(phase, tool, ds, bucket)
        n = ds.size(bucket)
        log_path = b.WORK / "logs" / f"{phase}-{bucket}.log"
        via = f" via proxy +{route.delay_ms} ms" if route else ""
        if route and route.throttle:
            via = f" via proxy, SlowDown above {route.throttle['per_second']:g}/s"
        b.log(
            f"{server.label} N={n}: {tool.label}{f' c={concurrency}' if concurrency else ''}{via}"
            f" (cap {cap:.0f} s)"
        )
        b.settle(server)
        offset = proxy_cpu = 0.0
        if route:
            route.proxy.reset()
            offset, proxy_cpu = route.proxy.clock_offset(), route.proxy.cpu_seconds()
        server_cpu = b.cpu_seconds(server.processes)
        m = b.run_measured(tool.build(inv), t.tool_env(tool, inv.server), cap, log_path)
        server_cpu = b.cpu_seconds(server.processes) - server_cpu
        check = b.check_bucket(b.client_for(server), bucket, ds.stale[bucket], ds.fresh[bucket])
        run = run_record(phase, tool, inv, n, cap, m, check, round(server_cpu, 2))
        if route:
            run.update(route.describe())
            run.update(lb.proxy_figures(route, m, offset, proxy_cpu, f"{phase}-{bucket}"))
        if tool.logs_limit:
            run["limit"] = flight.limit_series(log_path, m.started_at)
        log_run(run)
        lb.log_figures(run)
        self.data["runs"].append(run)
        self.save()
        b.empty_and_delete_bucket(server, bucket)
        return run

    # ----------------------------------------------------------------------------------------

    def fill_jobs(self, server: b.Server, jobs: dict[str, lb.Job]) -> b.Dataset:
        return self.fill(server, {bucket: job.n for bucket, job in jobs.items()}, self.cfg.parts)

    def run_jobs(self, ds: b.Dataset, jobs: dict[str, lb.Job]) -> None:
        for bucket, job in jobs.items():
            route = self.routes.route(ds.server, job.setting)
            self.run_tool(job.phase, t.TOOLS[job.tool], ds, bucket, route=route)

    def job_groups(self, server: str) -> list[dict[str, lb.Job]]:
        """The buckets of the comparison, latency and throttling parts, a group per fill. Both
        servers get the same groups in the same order; a group is at most 8 buckets (SeaweedFS
        `weed mini` has a few dozen volume slots, a bucket takes one, and tests leave some)."""
        skip, groups = self.cfg.skip, []
        if "compare" not in skip:
            groups += [lb.compare_jobs(self.cfg, server, [n]) for n in self.cfg.ns]
        if "latency" not in skip:
            groups += [g for n in self.cfg.delay_ns for g in lb.latency_jobs(self.cfg, server, n)]
        if "throttle" not in skip:
            groups.append(lb.throttle_jobs(self.cfg, server))
        return [g for g in groups if g]

    def run_groups(self, servers: list[str]) -> None:
        """Group by group: SeaweedFS's stale uploads are created first and age while Ceph runs
        the same group (its clock cannot be moved); its fresh ones come at least a cap later."""
        ceph = self.job_groups("ceph") if "ceph" in servers else []
        seaweed = self.job_groups("seaweedfs") if "seaweedfs" in servers else []
        for i in range(max(len(ceph), len(seaweed))):
            aging = None
            if i < len(seaweed):
                aging = (self.fill_jobs(self.servers["seaweedfs"], seaweed[i]), seaweed[i])
            if i < len(ceph):
                ds = self.fill_jobs(self.servers["ceph"], ceph[i])
                self.fill_fresh(ds, 0)
                self.run_jobs(ds, ceph[i])
            if aging:
                self.fill_fresh(aging[0], self.cfg.cap + 15)
                self.run_jobs(*aging)

    def curve(self) -> None:
        """mpu-sweeper at each concurrency, without and with verification, on Ceph."""
        server = self.servers["ceph"]
        modes = ["mpu-sweeper-no-verify", "mpu-sweeper"]
        runs = {f"curve-{c}-{mode}": (c, mode) for c in self.cfg.curve_levels for mode in modes}
        ds = self.fill(server, {k: self.cfg.curve_n for k in runs}, self.cfg.parts)
        self.fill_fresh(ds, 0)
        for bucket, (c, mode) in runs.items():
            self.run_tool("curve", t.TOOLS[mode], ds, bucket, concurrency=c)

    def faster_server(self) -> str:
        """The server where mpu-sweeper (defaults) aborted fastest at the largest N compared."""
        if self.cfg.memory_server != "auto":
            return self.cfg.memory_server
        best: dict[str, tuple[int, float]] = {}
        for r in self.data["runs"]:
            if r["phase"] == "compare" and r["tool"] == "mpu-sweeper" and r["correct"]:
                best[r["server"]] = max(best.get(r["server"], (0, 0.0)), (r["n"], r["rate"]))
        if not best:
            return "ceph"
        return max(best, key=lambda s: best[s])

    def memory(self) -> None:
        """mpu-sweeper's peak RSS for growing numbers of uploads, on the faster server."""
        name = self.faster_server()
        server = self.servers[name]
        sizes = {f"mem-{name}-{n}": n for n in self.cfg.memory_ns}
        ds = self.fill(server, sizes, self.cfg.memory_parts)
        if server.can_age:
            self.fill_fresh(ds, 0)
        else:
            # No fresh uploads here: a sweep of 100,000 uploads on SeaweedFS can outlast any
            # affordable stale/fresh gap (its pace drops while it holds that many), and what is
            # measured is memory. The comparison runs check that fresh uploads survive. A few
            # seconds' wait makes the stale set at least 1 s older than the cutoff.
            b.fill_fresh(self.cfg, ds, {k: [] for k in sizes}, 5)
        for bucket in sizes:
            self.run_tool("memory", t.TOOLS["mpu-sweeper"], ds, bucket)

    # ----------------------------------------------------------------------------------------

    def run(self) -> None:
        ceph = self.servers["ceph"]
        with b.aged_gateway(ceph) if ceph.can_age else contextlib.nullcontext():
            self.phases()
        report.write(self.cfg.results_dir, self.data)

    def phases(self) -> None:
        skip = self.cfg.skip
        servers = [s for s in self.cfg.servers if s in self.servers]
        try:
            self.run_groups(servers)
            self.routes.close()
            if "curve" not in skip and "ceph" in servers:
                self.curve()
            if "memory" not in skip:
                self.memory()
            if "operator" not in skip:
                self.operator()
        finally:
            self.routes.close()
            self.data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.data["meta"]["uptime_end"] = b.uptime()
            self.save()

    def operator(self) -> None:
        if self.kube_env is None:
            b.log("no Kubernetes bed environment given: operator part skipped")
            return
        self.data["operator"] = operator_bench.run(
            self.cfg, self.servers["ceph"], self.kube_env, self.save_operator
        )

    def save_operator(self, result: dict) -> None:
        self.data["operator"] = result
        self.save()


def main() -> None:
    # SIGTERM becomes an ordinary exit, so that the finally blocks stop our gateway and
    # controller processes and save what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s3_env = b.read_env_file(sys.argv[1])
    kube_env = b.read_env_file(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
    b.freeze_binaries()
    Bench(b.Config.from_env(), s3_env, kube_env).run()


if __name__ == "__main__":
    main()
