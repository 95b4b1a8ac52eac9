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
import operator_bench
import report
import tools as t


def parse_summary(stdout: str):
    try:
        return json.loads(stdout)
    except ValueError:
        return None


class Bench:
    def __init__(self, cfg: b.Config, s3_env: dict[str, str], kube_env: dict[str, str] | None):
        self.cfg = cfg
        self.kube_env = kube_env
        self.servers = b.servers_from_env(s3_env)
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

    def run_tool(self, phase: str, tool: t.Tool, ds: b.Dataset, bucket: str, concurrency=None) -> dict:
        server = ds.server
        inv = t.invocation(server, bucket, ds.cutoff, concurrency)
        cap = self.cfg.loop_cap if tool.per_upload_process else self.cfg.cap
        if phase == "memory":
            cap = self.cfg.memory_cap
        if tool.kind == "duration" and ds.fresh.get(bucket):
            # Past this, the tool's sliding cutoff would reach the fresh uploads (SeaweedFS only).
            cap = min(cap, ds.cutoff.safe_duration())
        n = ds.size(bucket)
        log_path = b.WORK / "logs" / f"{phase}-{bucket}.log"
        b.log(
            f"{server.label} N={n}: {tool.label}{f' c={concurrency}' if concurrency else ''}"
            f" (cap {cap:.0f} s)"
        )
        b.settle(server)
        server_cpu = b.cpu_seconds(server.processes)
        m = b.run_measured(tool.build(inv), t.peer_env(server), cap, log_path)
        server_cpu = b.cpu_seconds(server.processes) - server_cpu
        check = b.check_bucket(b.client_for(server), bucket, ds.stale[bucket], ds.fresh[bucket])
        ok = check.correct and not m.capped and m.exit_code == 0
        run = {
            "phase": phase,
            "server": server.name,
            "n": n,
            "fresh": check.fresh_total,
            "tool": tool.name,
            "concurrency": concurrency,
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
            "server_cpu_s": round(server_cpu, 2),
            "rate": round(check.aborted / m.wall, 2),
            # An unfinished run's projection: its own measured pace, over the whole set.
            "projected_s": round(m.wall * n / check.aborted, 1)
            if check.aborted and check.stale_left
            else None,
            "summary": parse_summary(m.stdout) if tool.name.startswith("mpu-sweeper") else None,
            "stderr_tail": "" if ok else m.stderr_tail,
        }
        b.log(
            f"  -> {m.wall:.1f} s, aborted {check.aborted}/{n} ({run['rate']}/s), stale left"
            f" {check.stale_left}, fresh missing {check.fresh_missing}, exit {m.exit_code},"
            f" capped {m.capped}, peak RSS {m.peak_rss_kb} kB, CPU tool {m.cpu_s} s server {server_cpu:.1f} s"
        )
        self.data["runs"].append(run)
        self.save()
        b.empty_and_delete_bucket(server, bucket)
        return run

    # ----------------------------------------------------------------------------------------

    def compare_fill(self, server: b.Server, ns: list[int]):
        """Buckets for every tool and N, filled at once; returns the data set and {bucket: (N, tool)}."""
        buckets = {f"cmp-{server.name}-{n}-{tool}": (n, tool) for n in ns for tool in self.cfg.tools}
        ds = self.fill(server, {k: n for k, (n, _) in buckets.items()}, self.cfg.parts)
        return ds, buckets

    def compare_runs(self, ds: b.Dataset, buckets: dict[str, tuple[int, str]]) -> None:
        for bucket, (_, tool) in buckets.items():
            self.run_tool("compare", t.TOOLS[tool], ds, bucket)

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
            seaweed = None
            if "compare" not in skip and "seaweedfs" in servers:
                # SeaweedFS's clock cannot be moved: its stale uploads are created first and age
                # while Ceph is measured; the fresh ones come later, at least a cap later.
                seaweed = self.compare_fill(self.servers["seaweedfs"], self.cfg.ns)
            if "compare" not in skip and "ceph" in servers:
                # One N at a time: the aged gateway's clock is moved for a shorter while.
                for n in self.cfg.ns:
                    ds, buckets = self.compare_fill(self.servers["ceph"], [n])
                    self.fill_fresh(ds, 0)
                    self.compare_runs(ds, buckets)
            if "curve" not in skip and "ceph" in servers:
                self.curve()
            if seaweed:
                ds, buckets = seaweed
                self.fill_fresh(ds, self.cfg.cap + 15)
                self.compare_runs(ds, buckets)
            if "memory" not in skip:
                self.memory()
            if "operator" not in skip:
                if self.kube_env is None:
                    b.log("no Kubernetes bed environment given: operator part skipped")
                else:
                    self.data["operator"] = operator_bench.run(
                        self.cfg, self.servers["ceph"], self.kube_env, self.save_operator
                    )
        finally:
            self.data["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.data["meta"]["uptime_end"] = b.uptime()
            self.save()

    def save_operator(self, result: dict) -> None:
        self.data["operator"] = result
        self.save()


def main() -> None:
    # SIGTERM becomes an ordinary exit, so that the finally blocks stop our gateway and
    # controller processes and save what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s3_env = b.read_env_file(sys.argv[1])
    kube_env = b.read_env_file(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
    Bench(b.Config.from_env(), s3_env, kube_env).run()


if __name__ == "__main__":
    main()
