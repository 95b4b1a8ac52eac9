"""The operator under load: thousands of MultipartCleanup resources over many namespaces,
created at once on the bed's API server, the controller running as a process.

1. Ramp: time from the first create until every resource is Ready=True with the counts its
   first sweep should report (followed by a watch); the controller's RSS and CPU seconds.
2. Steady: every resource runs on a schedule (`@every BENCH_OPERATOR_INTERVAL_S`) with nothing
   else changing. Over a window, the API server's `apiserver_request_total` (by verb, resource
   and subresource) and the controller's `mpu_sweeper_runs_total` are read before and after:
   requests per scheduled run, status writes and Secret reads among them, and controller CPU
   per run. The API server is shared (other tests, the node bed's components), so its
   background traffic is measured over windows without the controller, before and after, and
   subtracted.

Resources share a few buckets (BENCH_OPERATOR_BUCKETS; Ceph limits buckets per user), each
resource its own prefix holding `stale_each` stale uploads (3 days old, through the aged
gateway) and one fresh upload that must survive.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import benchlib as b
import kubeapi

GROUP_PATH = "/apis/mpusweeper.io/v1alpha1"
SECRET = "s3-credentials"
LABEL = "mpu-bench-run"
READY_LIMIT = 900  # seconds: a hang guard, far above the 120 s target
CREATE_THREADS = 8
WINDOW_TRIES = 3  # an API server restarted mid-window (counters went back) is measured again


@dataclasses.dataclass
class Layout:
    """Which namespace, bucket and prefix each resource gets."""

    run_id: str
    resources: int
    namespaces: list[str]
    buckets: list[str]
    stale_each: int

    @classmethod
    def new(cls, cfg: b.Config) -> "Layout":
        run_id = str(int(time.time()))
        nss = [f"mpu-bench-op-{run_id}-{i:03d}" for i in range(cfg.operator_namespaces)]
        buckets = [f"op-bench-{i:02d}" for i in range(max(1, cfg.operator_buckets))]
        return cls(run_id, cfg.operator_resources, nss, buckets, cfg.operator_stale_each)

    def namespace(self, i: int) -> str:
        return self.namespaces[i % len(self.namespaces)]

    def bucket(self, i: int) -> str:
        return self.buckets[i % len(self.buckets)]

    @staticmethod
    def prefix(i: int) -> str:
        return f"r{i:05d}/"

    def keys(self, fresh: bool) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {bk: [] for bk in self.buckets}
        for i in range(self.resources):
            names = ["fresh.bin"] if fresh else [f"stale-{j}.bin" for j in range(self.stale_each)]
            out[self.bucket(i)] += [f"{self.prefix(i)}{n}" for n in names]
        return out


def labels(layout: Layout) -> dict:
    return {"labels": {LABEL: layout.run_id}}


def resource(layout: Layout, i: int, server: b.Server, interval_s: int) -> dict:
    return {
        "apiVersion": "mpusweeper.io/v1alpha1",
        "kind": "MultipartCleanup",
        "metadata": {
            "name": f"cleanup-{i:05d}",
            "namespace": layout.namespace(i),
            **labels(layout),
        },
        "spec": {
            "bucket": layout.bucket(i),
            "prefix": layout.prefix(i),
            "endpoint": server.endpoint,
            "addressingStyle": "path",
            "credentialsSecretRef": {"name": SECRET},
            "maxAge": "1d",
            "schedule": f"@every {interval_s}s",
        },
    }


def settled(item: dict, stale_each: int) -> bool:
    """Ready=True and a last run that found the prefix's uploads and aborted its stale ones."""
    status = item.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    run = status.get("lastRun") or {}
    return (
        ready
        and run.get("found") == stale_each + 1
        and run.get("aborted", 0) + run.get("alreadyGone", 0) == stale_each
        and run.get("failed") == 0
    )


# --------------------------------------------------------------------------------------------
# The cluster side


def kubectl(kubeconfig: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=600
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def prepare_cluster(kube: kubeapi.Kube, kubeconfig: str, layout: Layout, server: b.Server) -> None:
    kubectl(kubeconfig, "apply", "-f", str(b.REPO / "crds" / "multipartcleanup.yaml"))
    kubectl(
        kubeconfig, "wait", "--for=condition=Established",
        "crd/multipartcleanups.mpusweeper.io", "--timeout=60s",
    )  # fmt: skip
    for ns in layout.namespaces:
        meta = {"metadata": {"name": ns, **labels(layout)}}
        kube.json("POST", "/api/v1/namespaces", meta, ok=(201, 409))
        secret = {
            "metadata": {"name": SECRET, **labels(layout)},
            "stringData": {
                "AWS_ACCESS_KEY_ID": server.access_key,
                "AWS_SECRET_ACCESS_KEY": server.secret_key,
            },
        }
        kube.json("POST", f"/api/v1/namespaces/{ns}/secrets", secret, ok=(201, 409))


def create_all(kube: kubeapi.Kube, layout: Layout, server: b.Server, interval_s: int) -> None:
    def create(i: int) -> None:
        ns = layout.namespace(i)
        # 409: a create retried after a broken connection had gone through.
        kube.json(
            "POST",
            f"{GROUP_PATH}/namespaces/{ns}/multipartcleanups",
            resource(layout, i, server, interval_s),
            ok=(201, 409),
        )

    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, range(layout.resources)))


def cleanup(kubeconfig: str, layout: Layout) -> None:
    selector = f"{LABEL}={layout.run_id}"
    for kind in ("mpc", "secret"):
        kubectl(kubeconfig, "delete", kind, "-A", "-l", selector, "--wait=false", check=False)
    kubectl(kubeconfig, "delete", "namespace", "-l", selector, "--wait=false", check=False)


class ReadyWatch(threading.Thread):
    """Follows the run's resources (a list, then a watch, again after any break) and keeps
    which of them have settled once."""

    def __init__(self, kube: kubeapi.Kube, layout: Layout):
        super().__init__(daemon=True)
        self.kube, self.stale_each = kube, layout.stale_each
        self.path = f"{GROUP_PATH}/multipartcleanups?labelSelector={LABEL}%3D{layout.run_id}"
        self.seen: dict[str, bool] = {}
        self.stop = threading.Event()

    def ready(self) -> int:
        return sum(self.seen.values())

    def _note(self, item: dict) -> None:
        # Sticky: the first run is what is timed; a later run (nothing left to abort) or a
        # Queued status written before it must not count the resource as not ready again.
        meta = item["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        self.seen[key] = self.seen.get(key, False) or settled(item, self.stale_each)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                # From the API server's watch cache (resourceVersion=0): a quorum list of
                # 5,000 resources from etcd costs it seconds of CPU, taken from the run timed.
                listed = self.kube.json("GET", f"{self.path}&resourceVersion=0")
                for item in listed["items"]:
                    self._note(item)
                events = 0
                for event in self.kube.watch(self.path, listed["metadata"]["resourceVersion"], 300):
                    if self.stop.is_set():
                        return
                    events += 1
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._note(event["object"])
                    elif event["type"] == "ERROR":  # 410 Gone: the watch fell behind
                        message = str(event["object"].get("message", ""))[:200]
                        b.log(f"operator: watch ended ({message}); listing again")
                        break
                else:
                    b.log(f"operator: the API server closed the watch after {events} events; listing again")
            except Exception as err:  # the API server restarted, a watch expired: list again
                b.log(f"operator: watch broke ({err}); listing again")
                time.sleep(1)


# --------------------------------------------------------------------------------------------
# The controller process


class Controller:
    def __init__(self, cfg: b.Config, server: b.Server, kubeconfig: str, layout: Layout):
        self.port = b.free_port()
        env = b.tool_env(server)
        # The controller reads S3 credentials from the Secrets, never from its own environment.
        env.pop("AWS_ACCESS_KEY_ID")
        env.pop("AWS_SECRET_ACCESS_KEY")
        env.update(KUBECONFIG=kubeconfig, WATCH_NAMESPACES=",".join(layout.namespaces))
        args = list(cfg.operator_args)
        if "--min-interval" not in " ".join(args):
            args += ["--min-interval", f"{max(1, cfg.operator_interval_s // 2)}s"]
        self.args = args
        log_path = b.WORK / "logs" / "operator-controller.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(b.MPU_SWEEPER), "controller", "--http-address", f"127.0.0.1:{self.port}",
                    "--log-level", "warn", *args,
                ],
                env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )  # fmt: skip
        b.wait_http(
            f"http://127.0.0.1:{self.port}/readyz", 120, self.proc, "the controller", want_ok=True
        )

    def memory_kb(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {
            k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)
        }

    def cpu_s(self) -> float:
        return b.pid_cpu_seconds(self.proc.pid)

    def runs(self) -> float:
        """mpu_sweeper_runs_total, summed over resources and results."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("mpu_sweeper_runs_total{")
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# Measuring


def ramp(
    kube: kubeapi.Kube, ctl: Controller, layout: Layout, server: b.Server, interval_s: int
) -> dict:
    """Creates every resource and follows them until all are settled; returns the figures."""
    watch = ReadyWatch(kube, layout)
    watch.start()
    cpu0 = ctl.cpu_s()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        creating = pool.submit(create_all, kube, layout, server, interval_s)
        out = follow(watch, ctl, layout, creating, start, cpu0)
    watch.stop.set()
    if creating.exception():
        raise RuntimeError(f"creating the resources failed: {creating.exception()}")
    out["ramp_cpu_s"] = round(ctl.cpu_s() - cpu0, 2)
    out["ramp_cpu_ms_per_run"] = round(out["ramp_cpu_s"] * 1e3 / max(out["ready_count"], 1), 2)
    return out


def follow(
    watch: ReadyWatch, ctl: Controller, layout: Layout, creating, start: float, cpu0: float
) -> dict:
    """Samples [s, resources seen, settled, controller RSS kB, CPU s] each second until all are
    settled (or the creation failed, the controller died, the hang guard passed)."""
    out: dict = {"timeline": []}
    while True:
        elapsed = round(time.monotonic() - start, 2)
        done = watch.ready()
        if creating.done() and "create_s" not in out:
            out["create_s"] = elapsed
            b.log(f"operator: {layout.resources} resources created in {elapsed} s")
        rss = ctl.memory_kb()["VmRSS"]
        out["timeline"].append([elapsed, len(watch.seen), done, rss, round(ctl.cpu_s() - cpu0, 2)])
        stop = done == layout.resources or elapsed > READY_LIMIT or not ctl.alive()
        if stop or (creating.done() and creating.exception()):
            break
        time.sleep(1)
    out.update(ready_count=done, all_ready=done == layout.resources)
    out["ready_s"] = elapsed if done == layout.resources else None
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


def went_back(after: dict, before: dict) -> bool:
    """Counters lower than before: the API server restarted in between."""
    return any(after.get(k, 0.0) < v for k, v in before.items())


def window(kube: kubeapi.Kube, seconds: float, ctl: Controller | None = None) -> dict | None:
    """API server request counts (and the controller's runs and CPU) over `seconds`."""
    for attempt in range(WINDOW_TRIES):
        before = kube.request_totals()
        runs0, cpu0 = (ctl.runs(), ctl.cpu_s()) if ctl else (0.0, 0.0)
        time.sleep(seconds)
        after = kube.request_totals()
        if went_back(after, before):
            b.log(
                f"operator: the API server restarted during a window (try {attempt + 1}); measuring again"
            )
            continue
        out = {"seconds": seconds, "requests": delta(after, before)}
        if ctl:
            out.update(runs=ctl.runs() - runs0, cpu_s=round(ctl.cpu_s() - cpu0, 2))
        return out
    return None


def per_run(steady: dict, backgrounds: list[dict]) -> list[dict]:
    """Requests per scheduled run by (verb, group, resource, subresource), background removed."""
    secs = sum(w["seconds"] for w in backgrounds)
    rows = []
    for key, count in steady["requests"].items():
        rate = sum(w["requests"].get(key, 0.0) for w in backgrounds) / secs if secs else 0.0
        net = count - rate * steady["seconds"]
        if count == 0 and rate == 0:
            continue
        verb, group, res, sub = key
        rows.append({
            "verb": verb, "group": group, "resource": res, "subresource": sub,
            "in_window": count, "background": round(rate * steady["seconds"], 1),
            "per_run": round(net / steady["runs"], 4) if steady["runs"] else None,
        })  # fmt: skip
    return sorted(rows, key=lambda r: -(r["per_run"] or 0))


# What the controller itself asks the API server for. Other rows of the window are other work on
# the shared API server, less its measured background: noise around zero.
CONTROLLER_RESOURCES = ("multipartcleanups", "secrets", "events")
WRITES = ("PATCH", "PUT", "APPLY", "UPDATE", "POST")


def headline(rows: list[dict]) -> dict:
    """Status writes, reads and Secret reads per run, and all of the controller's requests.

    This kube-apiserver (1.20) counts a GET of one custom resource as LIST (checked: 20 GETs of
    one MultipartCleanup by name add 20 to LIST); the controller lists only when a watch starts.
    """

    def total(pred) -> float:
        return round(sum(r["per_run"] or 0 for r in rows if pred(r)), 3)

    def mpc(r) -> bool:
        return r["resource"] == "multipartcleanups"

    return {
        "status_writes_per_run": total(
            lambda r: mpc(r) and r["subresource"] == "status" and r["verb"] in WRITES
        ),
        "mpc_writes_per_run": total(lambda r: mpc(r) and r["verb"] in WRITES),
        "mpc_reads_per_run": total(lambda r: mpc(r) and r["verb"] in ("GET", "LIST")),
        "secret_reads_per_run": total(
            lambda r: r["resource"] == "secrets" and r["verb"] in ("GET", "LIST")
        ),
        "event_writes_per_run": total(lambda r: r["resource"] == "events" and r["verb"] in WRITES),
        "requests_per_run": total(lambda r: r["resource"] in CONTROLLER_RESOURCES),
    }


def other_controllers(own_pid: int | None = None) -> list[str]:
    """mpu-sweeper controllers of other work on this machine: one that watches every namespace
    would reconcile (and write to) the bench's resources too."""
    found = b.cmd_output(["pgrep", "-af", "mpu-sweeper controller"]).splitlines()
    return [
        line[:200]
        for line in found
        if line.split(" ", 1)[0] != str(own_pid) and "pgrep" not in line
    ]


def steady_phase(cfg: b.Config, kube: kubeapi.Kube, ctl: Controller, ready_at: float) -> dict:
    """Waits until every resource has run on its schedule once more, then one window."""
    wait = ready_at + cfg.operator_interval_s + 15 - time.monotonic()
    if wait > 0:
        b.log(f"operator: waiting {wait:.0f} s until every resource has run on its schedule again")
        time.sleep(wait)
    b.log(f"operator: steady window of {cfg.operator_steady_s} s")
    steady = window(kube, cfg.operator_steady_s, ctl)
    if steady:
        steady["cpu_ms_per_run"] = (
            round(steady["cpu_s"] * 1e3 / steady["runs"], 2) if steady["runs"] else None
        )
    return steady


def check_buckets(server: b.Server, ds: b.Dataset) -> b.Check:
    client = b.client_for(server)
    checks = [b.check_bucket(client, bk, ds.stale[bk], ds.fresh[bk]) for bk in ds.stale]
    return b.Check(
        *(
            sum(getattr(c, f) for c in checks)
            for f in ("stale_total", "stale_left", "fresh_total", "fresh_missing")
        )
    )


# --------------------------------------------------------------------------------------------


def run(cfg: b.Config, server: b.Server, kube_env: dict[str, str], save) -> dict:
    kubeconfig = kube_env["MPU_TEST_KUBECONFIG"]
    kube = kubeapi.Kube(kubeconfig)
    layout = Layout.new(cfg)
    b.log(
        f"operator: {layout.resources} resources over {len(layout.namespaces)} namespaces and"
        f" {len(layout.buckets)} buckets, {layout.stale_each} stale uploads each, on {server.label}"
    )
    result: dict = {
        "resources": layout.resources, "namespaces": len(layout.namespaces),
        "buckets": len(layout.buckets), "stale_each": layout.stale_each, "server": server.name,
        "interval_s": cfg.operator_interval_s,
    }  # fmt: skip
    ctl = None
    try:
        prepare_cluster(kube, kubeconfig, layout, server)
        ds = b.fill_stale(cfg, server, layout.keys(fresh=False), cfg.parts)
        b.fill_fresh(cfg, ds, layout.keys(fresh=True), 0)
        b.settle(server)
        backgrounds = [window(kube, cfg.operator_baseline_s)] if cfg.operator_baseline_s else []
        ctl = Controller(cfg, server, kubeconfig, layout)
        result["controller_args"] = ctl.args
        result["other_controllers"] = other_controllers(ctl.proc.pid)
        time.sleep(3)  # idle: the informers have listed their (empty) namespaces
        result["rss_before_kb"] = ctl.memory_kb()["VmRSS"]
        result.update(ramp(kube, ctl, layout, server, cfg.operator_interval_s))
        ready_at = time.monotonic()
        log_ramp(result)
        save(result)
        if result["all_ready"] and cfg.operator_steady_s:
            result["steady"] = steady_phase(cfg, kube, ctl, ready_at)
        mem = ctl.memory_kb()
        result.update(
            rss_after_kb=mem["VmRSS"], rss_peak_kb=mem["VmHWM"], cpu_total_s=round(ctl.cpu_s(), 2)
        )
        result["other_controllers"] += [
            c for c in other_controllers(ctl.proc.pid) if c not in result["other_controllers"]
        ]
        ctl.stop()
        if result.get("steady") and cfg.operator_baseline_s:
            backgrounds.append(window(kube, cfg.operator_baseline_s))
        finish_steady(result, [w for w in backgrounds if w])
        check = check_buckets(server, ds)
        result.update(
            stale_left=check.stale_left,
            fresh_missing=check.fresh_missing,
            correct=check.correct and result["all_ready"],
        )
        log_end(result)
        save(result)
    finally:
        if ctl:
            ctl.stop()
        cleanup(kubeconfig, layout)
        for bucket in layout.buckets:
            b.empty_and_delete_bucket(server, bucket)
    return result


def finish_steady(result: dict, backgrounds: list[dict]) -> None:
    steady = result.get("steady")
    if not steady:
        return
    rows = per_run(steady, backgrounds)
    steady["background_windows_s"] = [w["seconds"] for w in backgrounds]
    steady["per_run"] = rows
    steady["requests"] = {"|".join(k): v for k, v in steady["requests"].items() if v}
    steady.update(headline(rows))


def log_ramp(result: dict) -> None:
    b.log(
        f"operator: {result['ready_count']}/{result['resources']} Ready with counts in"
        f" {result['ready_s']} s (created in {result.get('create_s')} s); controller CPU"
        f" {result['ramp_cpu_s']} s ({result['ramp_cpu_ms_per_run']} ms per first run)"
    )


def log_end(result: dict) -> None:
    steady = result.get("steady") or {}
    b.log(
        f"operator: RSS {result['rss_before_kb']} -> {result['rss_after_kb']} kB (peak"
        f" {result['rss_peak_kb']}); steady: {steady.get('runs')} runs,"
        f" {steady.get('requests_per_run')} API requests per run, status writes"
        f" {steady.get('status_writes_per_run')}, Secret reads {steady.get('secret_reads_per_run')},"
        f" CPU {steady.get('cpu_ms_per_run')} ms per run; stale left {result['stale_left']},"
        f" fresh missing {result['fresh_missing']}"
    )
