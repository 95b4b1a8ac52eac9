"""Shared helpers for the mpu-sweeper benchmarks: configuration, S3 clients, filling buckets with
stale and fresh multipart uploads, checking what survived, and running a tool under a time cap
while measuring its wall time and peak RSS.

Everything talks to 127.0.0.1 only: endpoints come from the test bed's env file, and every child
process gets AWS_EC2_METADATA_DISABLED=true so no SDK ever probes the instance metadata address.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = Path(os.environ.get("MPU_CACHE_DIR", Path.home() / ".cache" / "mpu-sweeper"))
VENV = CACHE / "bench-venv"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
WORK = Path(os.environ.get("BENCH_WORK_DIR", "/tmp/mpu-sweeper-bench"))
# The binaries under test are copied here when the run starts (freeze_binaries): a build into the
# shared target directory while the bench runs must not change what it measures halfway.
BUILT = {
    "mpu-sweeper": TARGET_DIR / "release" / "mpu-sweeper",
    "fault_proxy": TARGET_DIR / "release" / "examples" / "fault_proxy",
}
MPU_SWEEPER = WORK / "bin" / "mpu-sweeper"
FAULT_PROXY = WORK / "bin" / "fault_proxy"

DAY = 86400


def freeze_binaries() -> None:
    for name, built in BUILT.items():
        if not built.exists():
            raise RuntimeError(f"{built} is missing: cargo build --release --bins --example fault_proxy")
        (WORK / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, WORK / "bin" / name)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Configuration (environment knobs, documented in bench/README.md)


def _ints(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).replace(",", " ").split()]


def _words(name: str, default: str) -> list[str]:
    return os.environ.get(name, default).replace(",", " ").split()


@dataclasses.dataclass
class Config:
    ns: list[int]
    fresh: int
    cap: float
    loop_cap: float
    memory_cap: float
    servers: list[str]
    tools: list[str]
    skip: set[str]
    curve_n: int
    curve_levels: list[int]
    memory_ns: list[int]
    memory_server: str
    delay_ns: list[int]
    delays: list[str]
    delay_tools: list[str]
    throttle_rate: float
    throttle_n: int
    throttle_delay: int
    throttle_ops: list[str]
    throttle_tools: list[str]
    operator_resources: int
    operator_namespaces: int
    operator_buckets: int
    operator_stale_each: int
    operator_interval_s: int
    operator_steady_s: int
    operator_baseline_s: int
    operator_args: list[str]
    parts: int
    memory_parts: int
    part_bytes: int
    fill_procs: int
    fill_threads: int
    results_dir: Path

    @classmethod
    def from_env(cls) -> "Config":
        return cls(
            ns=_ints("BENCH_N", "2000 20000"),
            fresh=int(os.environ.get("BENCH_FRESH", "50")),
            cap=float(os.environ.get("BENCH_CAP", "300")),
            # The aws-cli and s3cmd loops start a process per upload: at their pace (a few per
            # second) a full N=20,000 run takes hours; their pace is steady, so a shorter cap
            # measures it as well and the run stays near an hour.
            loop_cap=float(os.environ.get("BENCH_LOOP_CAP", "90")),
            # mpu-sweeper's memory runs must finish: 100,000 uploads take ~5 min on SeaweedFS.
            memory_cap=float(os.environ.get("BENCH_MEMORY_CAP", "900")),
            servers=_words("BENCH_SERVERS", "ceph seaweedfs"),
            tools=_words(
                "BENCH_TOOLS", "mpu-sweeper mpu-sweeper-no-verify boto3 rclone awscli s3cmd"
            ),
            skip=set(_words("BENCH_SKIP", "")),
            curve_n=int(os.environ.get("BENCH_CURVE_N", "3000")),
            curve_levels=_ints("BENCH_CURVE_LEVELS", "1 2 4 8 16 32 64 128"),
            memory_ns=_ints("BENCH_MEMORY_N", "1000 10000 100000"),
            memory_server=os.environ.get("BENCH_MEMORY_SERVER", "auto"),
            # Round-trip time: every tool through the fault proxy, "direct" meaning without it.
            # 5,000: a mpu-sweeper run of 2,000 lasts 1-2 s and single runs differed by up to
            # 45%; at 5,000 the peers' slowest runs (~21/s at +40 ms) still finish within the cap.
            delay_ns=_ints("BENCH_DELAY_N", "5000"),
            delays=_words("BENCH_DELAYS", "direct 0 10 40"),
            delay_tools=_words("BENCH_DELAY_TOOLS", "mpu-sweeper mpu-sweeper-no-verify boto3 rclone"),
            # A server that answers 503 SlowDown above a request rate.
            throttle_rate=float(os.environ.get("BENCH_THROTTLE_RATE", "100")),
            throttle_n=int(os.environ.get("BENCH_THROTTLE_N", "4000")),
            throttle_delay=int(os.environ.get("BENCH_THROTTLE_DELAY", "0")),
            throttle_ops=_words("BENCH_THROTTLE_OPS", "AbortMultipartUpload"),
            throttle_tools=_words("BENCH_THROTTLE_TOOLS", "mpu-sweeper mpu-sweeper-no-verify"),
            operator_resources=int(os.environ.get("BENCH_OPERATOR_RESOURCES", "5000")),
            operator_namespaces=int(os.environ.get("BENCH_OPERATOR_NAMESPACES", "100")),
            # Resources share a few buckets (each its own prefix): Ceph limits buckets per user.
            operator_buckets=int(os.environ.get("BENCH_OPERATOR_BUCKETS", "10")),
            operator_stale_each=int(os.environ.get("BENCH_OPERATOR_STALE_EACH", "4")),
            operator_interval_s=int(os.environ.get("BENCH_OPERATOR_INTERVAL_S", "120")),
            operator_steady_s=int(os.environ.get("BENCH_OPERATOR_STEADY_S", "120")),
            operator_baseline_s=int(os.environ.get("BENCH_OPERATOR_BASELINE_S", "30")),
            operator_args=_words("BENCH_OPERATOR_ARGS", ""),
            parts=int(os.environ.get("BENCH_PARTS", "1")),
            memory_parts=int(os.environ.get("BENCH_MEMORY_PARTS", "0")),
            part_bytes=int(os.environ.get("BENCH_PART_BYTES", "1024")),
            fill_procs=int(os.environ.get("BENCH_FILL_PROCS", "2")),
            fill_threads=int(os.environ.get("BENCH_FILL_THREADS", "24")),
            results_dir=Path(os.environ.get("BENCH_RESULTS_DIR", BENCH_DIR / "results")),
        )


def read_env_file(path: str | Path) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@dataclasses.dataclass
class Server:
    """One S3 server of the bed. `aged_endpoint` is set where the server's clock can be moved."""

    name: str
    label: str
    endpoint: str
    access_key: str
    secret_key: str
    # Ceph only: the bed's ceph.conf, for a gateway of our own whose clock runs in the past.
    ceph_conf: str | None = None
    aged_endpoint: str | None = None  # set while that gateway runs (aged_gateway)
    rclone_provider: str = "Other"
    # Command lines of the server's processes, to account the CPU time a run cost the server.
    processes: str = "$^"
    # Run (untimed) before each measured run so that every tool meets the server in one state.
    settle: list[str] | None = None
    # "direct", or the name of what sits between the tools and the server ("proxy").
    route: str = "direct"

    @property
    def can_age(self) -> bool:
        return self.ceph_conf is not None


def servers_from_env(env: dict[str, str]) -> dict[str, Server]:
    ak, sk = env["MPU_TEST_ACCESS_KEY_ID"], env["MPU_TEST_SECRET_ACCESS_KEY"]
    ceph_conf = env["MPU_TEST_CEPH_CONF"]
    return {
        "ceph": Server(
            "ceph",
            "Ceph RGW",
            env["MPU_TEST_CEPH_ENDPOINT"],
            ak,
            sk,
            ceph_conf=ceph_conf,
            rclone_provider="Ceph",
            processes=r"^radosgw .*-n client\.rgw\.main |^ceph-osd ",
            # RGW queues the part objects of every aborted upload for garbage collection (after
            # rgw_gc_obj_min_wait, 2 h); on the bed's memstore OSD each abort costs more the
            # longer that queue is (2.8 ms of server CPU per abort with it empty, 6 ms at 17,000
            # entries), so a tool run after others would pay for their aborts. Draining it before
            # each run puts every tool in front of the same server.
            settle=["radosgw-admin", "-c", ceph_conf, "gc", "process", "--include-all"],
        ),
        "seaweedfs": Server(
            "seaweedfs",
            "SeaweedFS",
            env["MPU_TEST_SEAWEEDFS_ENDPOINT"],
            ak,
            sk,
            rclone_provider="SeaweedFS",
            processes=r"/weed mini ",
        ),
    }


def tool_env(server: Server) -> dict[str, str]:
    """Environment for every child process: credentials, region, and no metadata probing."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("AWS_"):
            del env[k]
    env.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        PATH=f"{VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


# --------------------------------------------------------------------------------------------
# S3 clients and the clock shift for the aged Ceph gateway

_clock_offset = 0.0  # seconds; set only in the fill worker processes that talk to the aged gateway


def _install_clock_shift() -> None:
    """Makes botocore sign with `now + _clock_offset`.

    The aged gateway runs days in the past; a request signed with the real time is refused as
    RequestTimeTooSkewed, so the creating client must lie about its clock the same way.
    """
    import botocore.auth as auth
    import botocore.compat as compat

    if getattr(auth, "_bench_shifted", False):
        return
    real = compat.get_current_datetime

    def shifted(remove_tzinfo=True):
        return real(remove_tzinfo) + dt.timedelta(seconds=_clock_offset)

    auth.get_current_datetime = shifted
    auth._bench_shifted = True


def s3_client(endpoint: str, access_key: str, secret_key: str, pool: int = 64):
    import boto3
    from botocore.config import Config as BotoConfig

    _install_clock_shift()
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            max_pool_connections=pool,
            retries={"max_attempts": 8, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


def client_for(server: Server, pool: int = 64):
    return s3_client(server.endpoint, server.access_key, server.secret_key, pool)


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def wait_http(url: str, limit: float, proc: subprocess.Popen, what: str, want_ok=False) -> None:
    """Waits until `url` answers (with 200 if `want_ok`); fails early if `proc` exits."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            if not want_ok:
                return  # any HTTP answer: it is serving
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.2)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def aged_gateway(server: Server, days: int = 3):
    """Starts a radosgw of our own in the bed's Ceph zone, `days` in the past under libfaketime.

    The bed's own aged gateway (:17481) has its clock moved by the integration tests; a private
    one with its own faketime file means the benchmark never moves a clock under them, nor they
    under it, and its clock can stay in the past for the whole run. Uploads created through it
    are seen by the main gateway with an Initiated `days` back. It runs in our process group
    (a Ctrl-C of the run stops it too) and is stopped by pid on the way out.
    """
    assert server.ceph_conf
    d = WORK / "aged-gateway"
    d.mkdir(parents=True, exist_ok=True)
    (d / "faketime").write_text(f"-{days}d\n")
    port = free_port()
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=FAKETIME_LIB,
        FAKETIME_TIMESTAMP_FILE=str(d / "faketime"),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",  # timers and timeouts keep running on real time
    )
    with open(d / "radosgw.out", "w") as out:
        proc = subprocess.Popen(
            [
                "radosgw", "-f", "-c", server.ceph_conf, "-n", "client.rgw.mpu-bench-aged",
                f"--rgw-frontends=beast endpoint=127.0.0.1:{port} tcp_nodelay=1",
                "--rgw-dns-name=localhost", "--rgw-thread-pool-size=64",
                f"--log-file={d / 'radosgw.log'}", f"--admin-socket={d / 'radosgw.asok'}",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint, 90, proc, f"the benchmark's aged radosgw (log in {d})")
        server.aged_endpoint = endpoint
        log(f"aged radosgw ({days} days back) at {endpoint}")
        yield
    finally:
        server.aged_endpoint = None
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Filling buckets concurrently (a process pool of thread pools: boto3 is CPU-bound under the GIL)

Upload = tuple[str, str]  # (key, upload id)


def _fill_chunk(args) -> list[Upload]:
    endpoint, ak, sk, bucket, keys, offset, parts, part_bytes, threads = args
    global _clock_offset
    _clock_offset = offset
    client = s3_client(endpoint, ak, sk, pool=threads + 4)
    body = b"x" * part_bytes

    def one(key: str) -> Upload:
        uid = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        for n in range(1, parts + 1):
            client.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=body)
        return key, uid

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, keys))


def create_uploads(
    cfg: Config,
    endpoint: str,
    server: Server,
    jobs: list[tuple[str, list[str]]],
    parts: int,
    offset: float = 0.0,
) -> dict[str, list[Upload]]:
    """Creates one upload per key, for several buckets at once; returns {bucket: uploads}."""
    chunks = []
    per = 500  # keys per task: small enough to spread over the processes evenly
    for bucket, keys in jobs:
        for i in range(0, len(keys), per):
            chunks.append(
                (
                    endpoint,
                    server.access_key,
                    server.secret_key,
                    bucket,
                    keys[i : i + per],
                    offset,
                    parts,
                    cfg.part_bytes,
                    cfg.fill_threads,
                )
            )
    out: dict[str, list[Upload]] = {b: [] for b, _ in jobs}
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(cfg.fill_procs, mp_context=ctx) as pool:
        for chunk, result in zip(chunks, pool.map(_fill_chunk, chunks)):
            out[chunk[3]].extend(result)
    return out


def make_bucket(client, bucket: str) -> None:
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def stale_keys(n: int, tag: str = "") -> list[str]:
    # Realistic-looking keys spread over a few "directories".
    return [f"data/{tag}{i % 97:02d}/object-{i:07d}.bin" for i in range(n)]


def fresh_keys(n: int, tag: str = "") -> list[str]:
    return [f"data/{tag}fresh/object-{i:04d}.bin" for i in range(n)]


# --------------------------------------------------------------------------------------------
# Data sets: stale and fresh uploads, and the cutoff between them

@dataclasses.dataclass
class Cutoff:
    """Where stale ends and fresh begins, in real (local) epoch seconds.

    `stale_until`: every stale upload was initiated at or before it; `fresh_from`: every fresh one
    at or after it. A tool's cutoff is fixed when its run starts (`max_age_at`); for a tool that
    takes an age, the cutoff then slides forward in real time, which is safe as long as the run is
    shorter than the gap between the two sets (`safe_duration`).
    """

    stale_until: float
    fresh_from: float
    margin: float = 3.0

    @property
    def gap(self) -> float:
        return self.fresh_from - self.stale_until

    def max_age_at(self, now: float) -> int:
        # A round day when the gap allows (the Ceph aged gateway puts stale uploads 3 days back);
        # otherwise just past the newest stale upload (SeaweedFS, whose clock cannot be moved).
        if now - self.stale_until > DAY + self.margin and now - self.fresh_from < DAY - 3600:
            return DAY
        return math.floor(now - self.stale_until - self.margin)

    def safe_duration(self) -> float:
        return self.gap - 2 * self.margin


@dataclasses.dataclass
class Dataset:
    """Buckets filled with stale uploads (to be aborted) and fresh ones (to survive)."""

    server: Server
    stale: dict[str, list[Upload]]
    stale_until: float
    fresh: dict[str, list[Upload]] = dataclasses.field(default_factory=dict)
    cutoff: Cutoff | None = None

    def size(self, bucket: str) -> int:
        return len(self.stale[bucket])


def _log_fill(server: Server, what: str, count: int, took: float) -> None:
    log(f"{server.label}: created {count} {what} uploads in {took:.0f} s ({count / max(took, 1e-9):.0f}/s)")


def fill_stale(cfg: Config, server: Server, keys: dict[str, list[str]], parts: int) -> Dataset:
    """Creates the stale uploads of every bucket at once (buckets are made anew).

    On Ceph they are created through our aged gateway, 3 days in the past. On SeaweedFS they are
    created now and become stale by waiting: the fresh set comes later (fill_fresh's min_gap).
    """
    client = client_for(server)
    for bucket in keys:
        empty_and_delete_bucket(server, bucket)  # leftovers of an interrupted run
        make_bucket(client, bucket)
    jobs = list(keys.items())
    start = time.time()
    if server.can_age:
        assert server.aged_endpoint, "fill_stale on Ceph needs aged_gateway() running"
        stale = create_uploads(cfg, server.aged_endpoint, server, jobs, parts, -3 * DAY)
        stale_until = time.time() - 3 * DAY
    else:
        stale = create_uploads(cfg, server.endpoint, server, jobs, parts)
        # Initiated has whole seconds on SeaweedFS: one more second covers the rounding.
        stale_until = time.time() + 1
    _log_fill(server, "stale", sum(map(len, keys.values())), time.time() - start)
    return Dataset(server, stale, stale_until)


def fill_fresh(cfg: Config, ds: Dataset, keys: dict[str, list[str]], min_gap: float) -> None:
    """Creates the fresh uploads, at least `min_gap` s after the stale ones, and sets the cutoff."""
    wait = ds.stale_until + min_gap - time.time()
    if wait > 0:
        log(f"{ds.server.label}: waiting {wait:.0f} s so that stale and fresh uploads are {min_gap:.0f} s apart")
        time.sleep(wait)
    fresh_from = time.time()
    ds.fresh = create_uploads(cfg, ds.server.endpoint, ds.server, list(keys.items()), parts=1)
    _log_fill(ds.server, "fresh", sum(map(len, keys.values())), time.time() - fresh_from)
    ds.cutoff = Cutoff(ds.stale_until, fresh_from)


# --------------------------------------------------------------------------------------------
# Listing and checking


def list_uploads(client, bucket: str, prefix: str | None = None) -> list[tuple[str, str, dt.datetime]]:
    """Every upload of the bucket, echoing exactly the markers the server sent.

    SeaweedFS sends only NextUploadIdMarker and reads a key-marker as "this key only"; echoing the
    server's own markers (and nothing else) pages correctly on both servers.
    """
    out = []
    params = {"Bucket": bucket, "MaxUploads": 1000}
    if prefix:
        params["Prefix"] = prefix
    seen = set()
    while True:
        resp = client.list_multipart_uploads(**params)
        for u in resp.get("Uploads", []):
            out.append((u["Key"], u["UploadId"], u.get("Initiated")))
        if not resp.get("IsTruncated"):
            return out
        marker = (resp.get("NextKeyMarker"), resp.get("NextUploadIdMarker"))
        if marker in seen or marker == (None, None):
            raise RuntimeError(f"listing of {bucket} does not advance (markers {marker})")
        seen.add(marker)
        params.pop("KeyMarker", None)
        params.pop("UploadIdMarker", None)
        if marker[0]:
            params["KeyMarker"] = marker[0]
        if marker[1]:
            params["UploadIdMarker"] = marker[1]


@dataclasses.dataclass
class Check:
    stale_total: int
    stale_left: int
    fresh_total: int
    fresh_missing: int

    @property
    def correct(self) -> bool:
        return self.stale_left == 0 and self.fresh_missing == 0

    @property
    def aborted(self) -> int:
        return self.stale_total - self.stale_left


def check_bucket(client, bucket: str, stale: list[Upload], fresh: list[Upload]) -> Check:
    present = {(k, u) for k, u, _ in list_uploads(client, bucket)}
    return Check(
        stale_total=len(stale),
        stale_left=sum(1 for x in stale if x in present),
        fresh_total=len(fresh),
        fresh_missing=sum(1 for x in fresh if x not in present),
    )


def settle(server: Server) -> None:
    if server.settle:
        start = time.time()
        subprocess.run(server.settle, capture_output=True, timeout=1800)
        log(f"{server.label}: settled in {time.time() - start:.0f} s ({' '.join(server.settle[-3:])})")


def empty_and_delete_bucket(server: Server, bucket: str, threads: int = 32) -> None:
    """Aborts whatever is left (untimed) and deletes the bucket, so the servers stay small."""
    client = client_for(server, pool=threads + 4)
    try:
        left = list_uploads(client, bucket)
    except client.exceptions.NoSuchBucket:
        return
    if len(left) > 1000 and MPU_SWEEPER.exists():
        # Many left (a capped run, an interrupted run): mpu-sweeper clears them faster than
        # Python threads; the pass below catches what it leaves (uploads younger than 1 s).
        subprocess.run(
            [
                str(MPU_SWEEPER), "sweep", "--bucket", bucket, "--max-age", "1s",
                "--endpoint", server.endpoint, "--addressing-style", "path",
                "--no-verify", "--concurrency", "32", "--quiet", "--output", "json",
            ],
            env=tool_env(server), capture_output=True, timeout=3600,
        )  # fmt: skip
        left = list_uploads(client, bucket)

    def abort(item):
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=item[0], UploadId=item[1])
        except client.exceptions.NoSuchUpload:
            pass

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(abort, left))
    try:
        client.delete_bucket(Bucket=bucket)
    except Exception as err:  # a bucket that cannot be deleted is harmless; say so and go on
        log(f"could not delete bucket {bucket}: {err}")


# --------------------------------------------------------------------------------------------
# Running a tool: wall time, peak RSS (GNU time), and a hard cap


@dataclasses.dataclass
class Measured:
    started_at: float  # epoch seconds when the tool was started
    wall: float
    exit_code: int | None
    capped: bool
    peak_rss_kb: int | None
    cpu_s: float | None  # user + system CPU of the tool's processes (GNU time; not when capped)
    stdout: str
    stderr_tail: str


def _group_members(pgid: int, exclude: int) -> list[int]:
    """Live processes of process group `pgid`, but `exclude`."""
    members = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == exclude:
            continue
        try:
            # After "(comm)": state, ppid, pgrp.
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie is already dead
            members.append(int(p.name))
    return members


def _kill_group_except(pgid: int, keep: int) -> None:
    """SIGKILLs every process of group `pgid` but `keep`, until none is left (a shell loop may
    fork a new child between two scans)."""
    for _ in range(50):
        victims = _group_members(pgid, keep)
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


class _PeakSampler(threading.Thread):
    """Polls the peak RSS (VmHWM) of every process in a group.

    GNU time's figure is lost for a loop killed at the cap: the shell dies before reaping its
    last child, so the children's usage never reaches time. Polling catches it anyway.
    """

    def __init__(self, pgid: int):
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid in _group_members(self.pgid, exclude=self.pgid):  # not GNU time itself
                with contextlib.suppress(OSError, IndexError, ValueError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm = int(status.split("VmHWM:", 1)[1].split()[0])
                    self.peak_kb = max(self.peak_kb, hwm)


def run_measured(cmd: list[str], env: dict[str, str], cap: float, log_path: Path) -> Measured:
    """Runs `cmd` under /usr/bin/time -v; kills the tool's processes at `cap` seconds.

    Peak RSS is that of the largest single process of the tree: GNU time's "Maximum resident set
    size" (the kernel's ru_maxrss of waited-for children) or, if larger, what polling saw. For
    the shell loops that is one aws/s3cmd process.
    """
    time_file = log_path.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(time_file), *cmd]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as err:
        started_at = time.time()
        start = time.monotonic()
        proc = subprocess.Popen(
            full,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # one process group: the cap kills the loop and its children
        )
        sampler = _PeakSampler(proc.pid)
        sampler.start()
        capped = False
        try:
            out, _ = proc.communicate(timeout=cap)
        except subprocess.TimeoutExpired:
            capped = True
            # Kill the tool's processes but not GNU time, so that it still reports peak RSS.
            _kill_group_except(proc.pid, keep=proc.pid)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
        wall = time.monotonic() - start
        sampler.stop.set()
        sampler.join()
    rss = sampler.peak_kb or None
    cpu = None
    if time_file.exists():
        report = time_file.read_text()
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
        if m:
            rss = max(rss or 0, int(m.group(1)))
        times = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", report)
        if len(times) == 2 and not capped:
            cpu = round(float(times[0]) + float(times[1]), 2)
    lines = log_path.read_text(errors="replace").splitlines()
    return Measured(
        started_at=started_at,
        wall=wall,
        exit_code=None if capped else proc.returncode,
        capped=capped,
        peak_rss_kb=rss,
        cpu_s=cpu,
        stdout=out.decode(errors="replace"),
        stderr_tail="\n".join(lines[-5:]),
    )


def pid_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pattern: str) -> float:
    """User + system CPU seconds used so far by the processes whose command line matches."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    rx = re.compile(pattern)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not rx.search(cmd):
                continue
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


# --------------------------------------------------------------------------------------------
# Machine and versions


def cmd_output(cmd: list[str], env: dict | None = None) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err})"


def uptime() -> str:
    return cmd_output(["uptime"])


def machine() -> dict:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {
        "cores": os.cpu_count(),
        "cpu": cpu.group(1) if cpu else "unknown",
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": cmd_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def utc_iso(ts: float) -> str:
    """Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC), the form S3 `Initiated` starts with."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
