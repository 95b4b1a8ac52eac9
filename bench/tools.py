"""The tools under test: how each is invoked, and the per-tool config files they need.

Each tool gets the same cutoff, computed when its run starts: uploads initiated before
`now - max_age` are stale. Tools that take an absolute time (the aws-cli, boto3 and s3cmd scripts)
get `cutoff_iso`; tools that take an age (rclone, mpu-sweeper) get `max_age` in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import time
from pathlib import Path
from typing import Callable

import benchlib as b

PEERS = b.BENCH_DIR / "peers"


@dataclasses.dataclass
class Tool:
    name: str
    label: str
    # "absolute" tools compare Initiated with a timestamp; "duration" tools take a max age.
    kind: str
    build: Callable[["Invocation"], list[str]]
    # Peers that spawn a process per upload: expected to hit the time cap at large N.
    per_upload_process: bool = False
    # mpu-sweeper: its log (JSON on stderr) says which concurrency limit the sweep is at.
    logs_limit: bool = False


@dataclasses.dataclass
class Invocation:
    server: b.Server
    bucket: str
    max_age: int
    cutoff_iso: str
    concurrency: int | None = None
    extra: list[str] = dataclasses.field(default_factory=list)


def invocation(server: b.Server, bucket: str, cutoff: b.Cutoff, concurrency: int | None = None):
    now = time.time()
    max_age = cutoff.max_age_at(now)
    return Invocation(server, bucket, max_age, b.utc_iso(now - max_age), concurrency)


def mpu_sweeper_cmd(inv: Invocation, verify: bool) -> list[str]:
    cmd = [
        str(b.MPU_SWEEPER),
        "sweep",
        "--bucket", inv.bucket,
        "--max-age", f"{inv.max_age}s",
        "--endpoint", inv.server.endpoint,
        "--addressing-style", "path",
        "--output", "json",
        "--quiet",
        "--log-format", "json",
    ]  # fmt: skip
    if not verify:
        cmd.append("--no-verify")
    if inv.concurrency:
        cmd += ["--concurrency", str(inv.concurrency)]
    return cmd


def config_dir(server: b.Server) -> Path:
    return b.WORK / "config" / server.name / server.route


def write_configs(server: b.Server) -> None:
    """Config files for the peers, each pointing at the loopback endpoint with path-style URLs."""
    d = config_dir(server)
    d.mkdir(parents=True, exist_ok=True)
    hostport = server.endpoint.split("://", 1)[1]
    (d / "aws.config").write_text(
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n"
    )
    # host_bucket without %(bucket)s makes s3cmd use path-style URLs.
    (d / "s3cfg").write_text(
        f"[default]\naccess_key = {server.access_key}\nsecret_key = {server.secret_key}\n"
        f"host_base = {hostport}\nhost_bucket = {hostport}\nuse_https = False\n"
        "signature_v2 = False\nbucket_location = us-east-1\ncheck_ssl_certificate = False\n"
        "progress_meter = False\n"
    )
    (d / "rclone.conf").write_text(
        f"[bench]\ntype = s3\nprovider = {server.rclone_provider}\nenv_auth = false\n"
        f"access_key_id = {server.access_key}\nsecret_access_key = {server.secret_key}\n"
        f"endpoint = {server.endpoint}\nregion = us-east-1\nforce_path_style = true\n"
    )
    for f in d.iterdir():
        f.chmod(0o600)


def peer_env(server: b.Server) -> dict[str, str]:
    env = b.tool_env(server)
    env["AWS_CONFIG_FILE"] = str(config_dir(server) / "aws.config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/dev/null"
    return env


# mpu-sweeper's usual logs, plus the sweep engine's debug lines: one "concurrency round" line
# per round of answers (a few hundred per run), nothing per request.
LIMIT_LOG = "warn,mpu_sweeper=info,mpu_sweeper::sweep=debug"


def tool_env(tool: Tool, server: b.Server) -> dict[str, str]:
    env = peer_env(server)
    if tool.logs_limit:
        env["RUST_LOG"] = LIMIT_LOG
    return env


def _awscli(inv: Invocation) -> list[str]:
    return ["bash", str(PEERS / "awscli_sweep.sh"), inv.server.endpoint, inv.bucket, inv.cutoff_iso]


def _s3cmd(inv: Invocation) -> list[str]:
    cfg = config_dir(inv.server) / "s3cfg"
    return ["bash", str(PEERS / "s3cmd_sweep.sh"), str(cfg), inv.bucket, inv.cutoff_iso]


def _boto3(inv: Invocation) -> list[str]:
    return [
        str(b.VENV / "bin" / "python"), str(PEERS / "boto3_sweep.py"),
        "--endpoint", inv.server.endpoint, "--bucket", inv.bucket,
        "--older-than", inv.cutoff_iso,
    ]  # fmt: skip


def _rclone(inv: Invocation) -> list[str]:
    return [
        "rclone", "--config", str(config_dir(inv.server) / "rclone.conf"),
        "backend", "cleanup", f"bench:{inv.bucket}", "-o", f"max-age={inv.max_age}s",
    ]  # fmt: skip


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in [
        Tool(
            "mpu-sweeper",
            "mpu-sweeper (defaults)",
            "duration",
            lambda i: mpu_sweeper_cmd(i, True),
            logs_limit=True,
        ),
        Tool(
            "mpu-sweeper-no-verify",
            "mpu-sweeper --no-verify",
            "duration",
            lambda i: mpu_sweeper_cmd(i, False),
            logs_limit=True,
        ),
        Tool("boto3", "boto3 paginator + abort loop", "absolute", _boto3),
        Tool("rclone", "rclone backend cleanup", "duration", _rclone),
        Tool("awscli", "aws s3api loop", "absolute", _awscli, per_upload_process=True),
        Tool("s3cmd", "s3cmd multipart + abortmp loop", "absolute", _s3cmd, per_upload_process=True),
    ]
}


def deb_version(package: str) -> str:
    return b.cmd_output(["dpkg-query", "-W", "-f", "${Version}", package])


def pip_pins() -> str:
    frozen = b.cmd_output([str(b.VENV / "bin" / "python"), "-m", "pip", "freeze"]).splitlines()
    wanted = ("awscli==", "boto3==", "botocore==", "s3transfer==", "matplotlib==")
    return ", ".join(line for line in frozen if line.lower().startswith(wanted))


def source_state() -> str:
    """The commit, and a digest of uncommitted changes under src/ (runs of a tree mid-edit)."""
    described = b.cmd_output(["git", "-C", str(b.REPO), "describe", "--always", "--dirty"])
    diff = subprocess.run(
        ["git", "-C", str(b.REPO), "diff", "HEAD", "--", "src", "Cargo.lock"],
        capture_output=True,
    ).stdout
    return f"{described} (src diff sha256 {hashlib.sha256(diff).hexdigest()[:12]})" if diff else described


def versions(server_env: dict[str, str]) -> dict[str, str]:
    vpy = str(b.VENV / "bin" / "python")
    return {
        "mpu-sweeper": b.first_line(b.cmd_output([str(b.MPU_SWEEPER), "--version"])),
        "mpu-sweeper git": source_state(),
        "mpu-sweeper binary sha256": hashlib.sha256(b.MPU_SWEEPER.read_bytes()).hexdigest()[:16],
        "aws-cli": b.first_line(b.cmd_output([str(b.VENV / "bin" / "aws"), "--version"], server_env)),
        "boto3": b.cmd_output([vpy, "-c", "import boto3,botocore;print('boto3', boto3.__version__, 'botocore', botocore.__version__)"]),
        "s3cmd": f"{b.first_line(b.cmd_output(['s3cmd', '--version']))} (Debian {deb_version('s3cmd')})",
        "rclone": f"{b.first_line(b.cmd_output(['rclone', 'version']))} (Debian {deb_version('rclone')})",
        "pip (pinned in run.sh)": pip_pins(),
        "python": b.first_line(b.cmd_output([vpy, "--version"])),
        "Ceph RGW": b.first_line(b.cmd_output(["radosgw", "--version"])),
        "SeaweedFS": b.first_line(
            b.cmd_output([str(b.CACHE / "venv" / "bin" / "weed"), "version"])
        ),
        "kube-apiserver": b.first_line(
            b.cmd_output([str(b.CACHE / "kube-apiserver-v1.20.2"), "--version"])
        ),
        "kubectl": b.first_line(b.cmd_output(["kubectl", "version", "--client"])),
        "etcd": b.first_line(b.cmd_output(["etcd", "--version"])),
    }
