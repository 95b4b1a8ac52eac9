"""results.md section and chart (operator.png) for the operator run: the ramp to every resource
Ready, and the API requests of each scheduled run. Reads both the current operator result and
the older one (500 resources in one namespace, timeline [s, ready, RSS kB])."""

from __future__ import annotations

from pathlib import Path

READY_S = 120  # issue 14: 5,000 resources all Ready with their first run within this
RSS_MB = 150
STATUS_WRITES_PER_RUN = 1.0


def mib(kb) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def mb(kb) -> float:
    return kb * 1024 / 1e6


def server_label(name: str) -> str:
    return {"ceph": "Ceph RGW", "seaweedfs": "SeaweedFS"}.get(name, name)


def timeline(op: dict) -> list[tuple[float, int | None, int, int]]:
    """(s, resources seen, Ready, RSS kB) whichever form the result has."""
    out = []
    for p in op.get("timeline", []):
        if len(p) == 3:
            out.append((p[0], None, p[1], p[2]))
        else:
            out.append((p[0], p[1], p[2], p[3]))
    return out


def render(op: dict | None) -> list[str]:
    if not op:
        return []
    out = ["## The operator", "", intro(op), "", *ramp_table(op)]
    steady = op.get("steady")
    if steady:
        out += steady_section(op, steady)
    return out


def intro(op: dict) -> str:
    nss = op.get("namespaces", 1)
    buckets = op.get("buckets", 1)
    args = " ".join(op.get("controller_args", [])) or "none"
    return (
        f"{op['resources']:,} `MultipartCleanup` resources over {nss} namespace(s), created at once"
        f" on the bed's kube-apiserver, each sweeping its own prefix of one of {buckets}"
        f" {server_label(op['server'])} bucket(s); each prefix holds {op['stale_each']} stale uploads"
        " and 1 fresh one. The controller runs as a process watching those namespaces, with"
        f" default settings but these flags: `{args}`. Ready means `Ready=True` with a last run that"
        f" found {op['stale_each'] + 1} uploads and aborted the {op['stale_each']} stale ones;"
        " the time runs from the first create."
    )


def ramp_table(op: dict) -> list[str]:
    cpu = op.get("ramp_cpu_s")
    per = op.get("ramp_cpu_ms_per_run")
    return [
        "| resources | created (s) | all Ready with counts (s) | Ready | RSS before (MiB) |"
        " RSS after (MiB) | peak RSS (MiB) | controller CPU to all Ready (s) | CPU per first run (ms) |"
        " bucket correct |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {op['resources']:,} | {op.get('create_s', '–')} | {op.get('ready_s') or 'not all'}"
        f" | {op.get('ready_count', 0):,} / {op['resources']:,} | {mib(op.get('rss_before_kb'))}"
        f" | {mib(op.get('rss_after_kb'))} | {mib(op.get('rss_peak_kb'))}"
        f" | {'–' if cpu is None else cpu} | {'–' if per is None else per}"
        f" | {'yes' if op.get('correct') else 'no'} |",
        "",
    ]


CONTROLLER_RESOURCES = ("multipartcleanups", "secrets", "events")
NOISE = 0.05  # per run: rows of other resources below this are background noise


def steady_section(op: dict, steady: dict) -> list[str]:
    windows = ", ".join(f"{s:.0f} s" for s in steady.get("background_windows_s", []))
    out = [
        f"### API requests per scheduled run (steady phase: `@every {op['interval_s']}s`, nothing"
        " else changing)",
        "",
        f"Over a {steady['seconds']:.0f} s window the controller completed {steady['runs']:.0f}"
        f" runs using {steady['cpu_s']} s of CPU (**{steady.get('cpu_ms_per_run')} ms per run**)."
        " Requests are the kube-apiserver's `apiserver_request_total` counted before and after"
        " the window; the API server is shared with other work, so its background rate, measured"
        f" over windows without the controller ({windows}), is subtracted.",
        "",
        f"- per run: **{steady.get('status_writes_per_run')} status writes**,"
        f" **{steady.get('secret_reads_per_run')} Secret reads**, {steady.get('mpc_reads_per_run')}"
        f" reads of the resource, {steady.get('event_writes_per_run')} Event writes;"
        f" {steady.get('requests_per_run')} requests in all to MultipartCleanups, Secrets and Events.",
        "- This kube-apiserver (v1.20) counts a GET of one custom resource as `LIST` (checked: 20"
        " GETs of one MultipartCleanup by name add 20 to LIST): the LIST rows of"
        " multipartcleanups are reads of one resource by name.",
        *other_controllers_note(op),
        "",
        "| verb | resource | subresource | in window | background (expected) | per run |",
        "|---|---|---|---:|---:|---:|",
    ]
    noise = 0.0
    for r in steady.get("per_run", []):
        if r["per_run"] is None or not r["resource"]:
            continue
        if r["resource"] in CONTROLLER_RESOURCES or abs(r["per_run"]) >= NOISE:
            out.append(request_row(r))
        else:
            noise += r["per_run"]
    return out + [f"| (other rows, each under {NOISE} per run) | | | | | {noise:.3f} |", ""]


def request_row(r: dict) -> str:
    res = f"{r['resource']}.{r['group']}" if r["group"] else r["resource"]
    return (
        f"| {r['verb']} | {res} | {r['subresource'] or '–'} | {r['in_window']:.0f}"
        f" | {r['background']} | {r['per_run']:.3f} |"
    )


def other_controllers_note(op: dict) -> list[str]:
    others = op.get("other_controllers") or []
    if not others:
        return []
    return [
        f"- **Other mpu-sweeper controllers ran on this machine during the run** ({len(others)}):"
        " one watching every namespace also reconciles the bench's resources, and its requests"
        " count here. " + "; ".join(f"`{o}`" for o in others[:3])
    ]


def targets(op: dict | None) -> list[tuple[str, str, bool]]:
    if not op:
        return []
    n = op["resources"]
    ready = op.get("ready_s")
    rows = [(
        f"{n:,} resources all Ready with their first run within {READY_S} s",
        f"{ready} s" if ready else f"{op.get('ready_count')} Ready at the limit",
        bool(ready) and ready <= READY_S and bool(op.get("correct")),
    )]  # fmt: skip
    if op.get("rss_peak_kb"):
        rows.append(
            (
                f"controller RSS < {RSS_MB} MB",
                f"peak {mb(op['rss_peak_kb']):.1f} MB",
                mb(op["rss_peak_kb"]) < RSS_MB,
            )
        )
    steady = op.get("steady") or {}
    if steady.get("status_writes_per_run") is not None:
        writes = steady["status_writes_per_run"]
        rows.append((
            f"at most {STATUS_WRITES_PER_RUN:g} status write per scheduled run (plus the Secret read)",
            f"{writes} status writes, {steady.get('secret_reads_per_run')} Secret reads per run",
            writes <= STATUS_WRITES_PER_RUN + 0.05,
        ))  # fmt: skip
    return rows


def chart(path: Path, op: dict | None) -> bool:
    points = timeline(op) if op else []
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ts = [p[0] for p in points]
    if points[0][1] is not None:
        ax.plot(
            ts, [p[1] for p in points], color="grey", ls=":", label="created (seen by the watch)"
        )
    ax.plot(ts, [p[2] for p in points], color="C0", label="Ready with their first run's counts")
    ax.axvline(READY_S, color="C0", ls="--", lw=0.8, label=f"target {READY_S} s")
    ax.set_xlabel("s since the first create")
    ax.set_ylabel("resources")
    ax.set_ylim(0, op["resources"] * 1.05)
    rss = ax.twinx()
    rss.plot(ts, [mb(p[3]) for p in points], color="C3", lw=1, label="controller RSS (MB)")
    rss.set_ylabel("controller RSS (MB)")
    rss.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = rss.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    ax.set_title(f"{op['resources']:,} MultipartCleanups over {op.get('namespaces', 1)} namespaces")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
