"""The operator under load: many MultipartCleanup resources created at once on the local API
server, the controller running as a process; time until every one is Ready=True with the counts
its sweep should report, and the controller's RSS before and after.

All resources share one Ceph bucket, each with its own prefix holding `stale_each` stale uploads
(created 3 days back through the aged gateway) and one fresh upload that must survive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import benchlib as b

# A namespace per run: the bed has no kube-controller-manager, so a deleted namespace never
# finishes terminating and its name cannot be used again.
NAMESPACE = f"mpu-bench-operator-{int(time.time())}"
BUCKET = "op-bench"
SECRET = "s3-credentials"
READY_LIMIT = 900  # seconds: a hang guard, far above the 60 s target


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
    r = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def rss_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def prefix(i: int) -> str:
    return f"r{i:04d}/"


def manifest(count: int, server: b.Server) -> str:
    items = [
        {
            "apiVersion": "mpusweeper.io/v1alpha1",
            "kind": "MultipartCleanup",
            "metadata": {"name": f"cleanup-{i:04d}", "namespace": NAMESPACE},
            "spec": {
                "bucket": BUCKET,
                "prefix": prefix(i),
                "endpoint": server.endpoint,
                "addressingStyle": "path",
                "credentialsSecretRef": {"name": SECRET},
                "maxAge": "1d",
            },
        }
        for i in range(count)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


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


def prepare_cluster(kubeconfig: str) -> None:
    kubectl(kubeconfig, "apply", "-f", str(b.REPO / "crds" / "multipartcleanup.yaml"))
    kubectl(
        kubeconfig, "wait", "--for=condition=Established",
        "crd/multipartcleanups.mpusweeper.io", "--timeout=60s",
    )  # fmt: skip
    kubectl(kubeconfig, "create", "namespace", NAMESPACE)


def create_secret(kubeconfig: str, server: b.Server) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "stringData": {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(secret))


def run(cfg: b.Config, server: b.Server, kube_env: dict[str, str], save) -> dict:
    kubeconfig = kube_env["MPU_TEST_KUBECONFIG"]
    count, stale_each = cfg.operator_resources, cfg.operator_stale_each
    b.log(f"operator: {count} resources, {stale_each} stale uploads each, on {server.label}")
    prepare_cluster(kubeconfig)
    create_secret(kubeconfig, server)

    stale = {BUCKET: [f"{prefix(i)}stale-{j}.bin" for i in range(count) for j in range(stale_each)]}
    ds = b.fill_stale(cfg, server, stale, cfg.parts)
    b.fill_fresh(cfg, ds, {BUCKET: [f"{prefix(i)}fresh.bin" for i in range(count)]}, 0)

    b.settle(server)
    port = b.free_port()
    log_path = b.WORK / "logs" / "operator-controller.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = b.tool_env(server)
    # The controller reads S3 credentials from the Secret, never from its own environment.
    env.pop("AWS_ACCESS_KEY_ID")
    env.pop("AWS_SECRET_ACCESS_KEY")
    env["KUBECONFIG"] = kubeconfig
    with open(log_path, "w") as log_file:
        controller = subprocess.Popen(
            [
                str(b.MPU_SWEEPER), "controller", "--namespace", NAMESPACE,
                "--http-address", f"127.0.0.1:{port}", "--log-level", "warn",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )  # fmt: skip
    result: dict = {"resources": count, "stale_each": stale_each, "server": server.name}
    try:
        b.wait_http(f"http://127.0.0.1:{port}/readyz", 60, controller, "the controller", want_ok=True)
        time.sleep(3)  # idle: the informers have listed their (empty) namespace
        result["rss_before_kb"] = rss_kb(controller.pid)["VmRSS"]

        start = time.monotonic()
        kubectl(kubeconfig, "create", "-f", "-", stdin=manifest(count, server))
        result["create_s"] = round(time.monotonic() - start, 2)
        b.log(f"operator: {count} resources created in {result['create_s']} s")

        timeline = []
        while True:
            items = json.loads(kubectl(kubeconfig, "get", "mpc", "-n", NAMESPACE, "-o", "json"))["items"]
            done = sum(settled(i, stale_each) for i in items)
            elapsed = round(time.monotonic() - start, 2)
            timeline.append([elapsed, done, rss_kb(controller.pid)["VmRSS"]])
            if done == count:
                break
            if elapsed > READY_LIMIT or controller.poll() is not None:
                break
            time.sleep(1)
        result["ready_count"] = done
        result["all_ready"] = done == count
        result["ready_s"] = elapsed if done == count else None
        result["timeline"] = timeline
        time.sleep(2)
        mem = rss_kb(controller.pid)
        result["rss_after_kb"] = mem["VmRSS"]
        result["rss_peak_kb"] = mem["VmHWM"]
        check = b.check_bucket(b.client_for(server), BUCKET, ds.stale[BUCKET], ds.fresh[BUCKET])
        result.update(
            stale_left=check.stale_left,
            fresh_missing=check.fresh_missing,
            correct=check.correct and done == count,
        )
        b.log(
            f"operator: {done}/{count} Ready with counts in {elapsed} s; RSS"
            f" {result['rss_before_kb']} -> {result['rss_after_kb']} kB (peak {result['rss_peak_kb']});"
            f" stale left {check.stale_left}, fresh missing {check.fresh_missing}"
        )
        save(result)
    finally:
        if controller.poll() is None:
            controller.send_signal(signal.SIGTERM)
            try:
                controller.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(controller.pid, signal.SIGKILL)
                controller.wait()
        # Without a namespace controller nothing deletes a namespace's contents: delete them first.
        for kind in ("mpc", "secret"):
            kubectl(kubeconfig, "delete", kind, "--all", "-n", NAMESPACE, "--wait=false", check=False)
        kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        b.empty_and_delete_bucket(server, BUCKET)
    return result
