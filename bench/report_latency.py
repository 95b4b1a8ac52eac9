"""results.md sections and charts for the runs through the fault proxy: throughput against the
round trip added per request (latency.png), a throttling server, and the requests in flight
(with the concurrency limit mpu-sweeper logged) over time (inflight.png)."""

from __future__ import annotations

import math
from pathlib import Path

import tools as t

MPU, NOV = "mpu-sweeper", "mpu-sweeper-no-verify"
PEERS = ("boto3", "rclone")
# Issue 14's targets, for mpu-sweeper with its defaults (verification on).
SPEEDUP_AT = {10: 15, 40: 30}
OWN_RATE_AT_10 = 0.80
THROTTLE_RATE_SHARE = 0.90
THROTTLED_AFTER_WARMUP = 0.05


def label(tool: str) -> str:
    return t.TOOLS[tool].label if tool in t.TOOLS else tool


def server_label(name: str) -> str:
    return {"ceph": "Ceph RGW", "seaweedfs": "SeaweedFS"}.get(name, name)


def setting_of(r: dict) -> str:
    return "direct" if r.get("route", "direct") == "direct" else str(r["delay_ms"])


def setting_label(setting: str) -> str:
    return "direct (no proxy)" if setting == "direct" else f"proxy +{setting} ms"


def latency_groups(runs: list[dict]) -> dict[tuple[str, int], dict[str, dict[str, dict]]]:
    """{(server, n): {setting: {tool: run}}}, settings in the order they ran."""
    groups: dict = {}
    for r in runs:
        if r["phase"] == "latency":
            groups.setdefault((r["server"], r["n"]), {}).setdefault(setting_of(r), {})[
                r["tool"]
            ] = r
    return groups


def rate_cell(r: dict | None) -> str:
    if not r:
        return "–"
    if r["capped"]:
        return f"{r['rate']:.1f} (capped)"
    return f"{r['rate']:.1f}" if r["correct"] else f"{r['rate']:.1f} (**not correct**)"


def ratio(a: dict | None, b_: dict | None) -> float | None:
    if not a or not b_ or not a["rate"]:
        return None
    return a["rate"] / b_["rate"] if b_["rate"] else math.inf


def fmt_ratio(x) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else f"{x:.1f}×"


def limit_text(r: dict) -> str:
    """The concurrency limit mpu-sweeper logged: its median over the run's second half, and its
    highest."""
    points = r.get("limit") or []
    if not points:
        return "–"
    late = sorted(p[1] for p in points[len(points) // 2 :])
    return f"{late[len(late) // 2]} (max {max(p[1] for p in points)})"


def inflight_text(r: dict) -> str:
    fig = r.get("proxy")
    if not fig:
        return "–"
    return f"{fig['inflight_settled']} (peak {fig['inflight_peak']})"


# --------------------------------------------------------------------------------------------
# results.md


def render(runs: list[dict]) -> list[str]:
    groups = latency_groups(runs)
    out: list[str] = []
    if groups:
        out += [
            "## Round-trip time: every tool through the same proxy",
            "",
            "Every tool reaches the server through the project's fault proxy"
            " (`examples/fault_proxy.rs`, a Rust/hyper HTTP/1.1 proxy, one upstream connection per"
            " client connection), which adds the same delay to every request: half before"
            " forwarding it, half after the answer's head. *direct* runs the same tools without the"
            " proxy, on buckets filled at the same time: the proxy's own cost is direct vs +0 ms."
            " Each cell is one run; aborts/s counts stale uploads really gone afterwards.",
            "",
        ]
        for key in sorted(groups):
            out += render_group(key, groups[key])
    out += render_throttle([r for r in runs if r["phase"] == "throttle"])
    return out


def render_group(key: tuple[str, int], by_setting: dict[str, dict[str, dict]]) -> list[str]:
    server, n = key
    settings = list(by_setting)
    tools = [x for x in t.TOOLS if any(x in by_setting[s] for s in settings)]
    out = [
        f"### {server_label(server)}, N = {n:,}: aborts/s",
        "",
        "| tool | " + " | ".join(setting_label(s) for s in settings) + " |",
        "|---|" + "---:|" * len(settings),
    ]
    for tool in tools:
        out.append(
            f"| {label(tool)} | "
            + " | ".join(rate_cell(by_setting[s].get(tool)) for s in settings)
            + " |"
        )
    out += [
        "",
        "| mpu-sweeper (defaults) ÷ tool | "
        + " | ".join(setting_label(s) for s in settings)
        + " |",
    ]
    out.append("|---|" + "---:|" * len(settings))
    for tool in tools:
        if tool != MPU:
            cells = [
                fmt_ratio(ratio(by_setting[s].get(MPU), by_setting[s].get(tool))) for s in settings
            ]
            out.append(f"| {label(tool)} | " + " | ".join(cells) + " |")
    out += ["", *own_rate_lines(by_setting), *overhead_lines(by_setting, tools), ""]
    out += inflight_table(by_setting, settings)
    return out


def own_rate_lines(by_setting) -> list[str]:
    zero = by_setting.get("0", {}).get(MPU)
    lines = []
    for s, tools in by_setting.items():
        if s not in ("direct", "0") and zero and tools.get(MPU):
            share = tools[MPU]["rate"] / zero["rate"]
            lines.append(
                f"- mpu-sweeper (defaults) at +{s} ms keeps **{share:.0%}** of its +0 ms rate."
            )
    return lines


def overhead_lines(by_setting, tools) -> list[str]:
    direct, zero = by_setting.get("direct", {}), by_setting.get("0", {})
    parts = []
    for tool in tools:
        d, z = direct.get(tool), zero.get(tool)
        if d and z and d["rate"]:
            cpu = f", proxy CPU {z['proxy_cpu_s']} s" if z.get("proxy_cpu_s") is not None else ""
            parts.append(f"{label(tool)} {z['rate'] / d['rate'] - 1:+.0%}{cpu}")
    if not parts:
        return []
    return ["- The proxy's own cost (+0 ms against direct, aborts/s): " + "; ".join(parts) + "."]


def inflight_table(by_setting, settings) -> list[str]:
    out = [
        "| mpu-sweeper run | requests in flight, settled (peak) | concurrency limit logged,"
        " 2nd half median (max) | requests | 503s |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in settings:
        for tool in (MPU, NOV):
            r = by_setting[s].get(tool)
            if r and r.get("proxy"):
                out.append(
                    f"| {label(tool)}, {setting_label(s)} | {inflight_text(r)} | {limit_text(r)}"
                    f" | {r['proxy']['requests']:,} | {r['proxy']['throttled']} |"
                )
    if len(out) == 2:
        return []
    return out + [
        "",
        "*Settled*: the median, over the middle half of the run's busy time, of the mean number"
        " of requests in flight at the proxy per time bin (all operations). The limit is what"
        " mpu-sweeper's sweep engine logged (debug lines, `concurrency round`), when it logs one.",
        "",
    ]


def render_throttle(runs: list[dict]) -> list[str]:
    if not runs:
        return []
    rule = runs[0].get("throttle_rule") or {}
    ops = ", ".join(rule.get("ops") or ["every operation"])
    delay = runs[0].get("delay_ms")
    others = f"other requests pass with +{delay} ms" if delay else "other requests pass as they are"
    out = [
        "## A server that throttles",
        "",
        f"The proxy answers `503 SlowDown` to {ops} above {rule.get('per_second', 0):g} per"
        f" second (a token bucket holding one second's worth), at once and without forwarding;"
        f" {others}. *After 10 s*: requests started 10 s or more after the tool.",
        "",
        "| server | tool | N | wall (s) | aborts/s (whole run) | of the limit | accepted/s after 10 s |"
        " of the limit | throttled after 10 s (those ops) | throttled after 10 s (all requests) |"
        " mpu-sweeper's `throttled` | in flight, settled (peak) | correct |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        out.append(throttle_row(r, rule.get("per_second")))
    return out + [""]


def throttle_row(r: dict, limit) -> str:
    thr = r.get("throttle") or {}
    pct = lambda x: "–" if x is None else f"{x:.1%}"  # noqa: E731
    share = r["rate"] / limit if limit else None
    own = (r.get("summary") or {}).get("throttled", "–")
    return (
        f"| {server_label(r['server'])} | {label(r['tool'])} | {r['n']:,} | {r['wall_s']:.1f}"
        f" | {r['rate']:.1f} | {pct(share)} | {thr.get('late_accepted_per_s', '–')}"
        f" | {pct(thr.get('late_accepted_share_of_limit'))} | {pct(thr.get('late_throttled_share'))}"
        f" | {pct(thr.get('late_throttled_share_all'))} | {own} | {inflight_text(r)}"
        f" | {'yes' if r['correct'] else 'no'} |"
    )


# --------------------------------------------------------------------------------------------
# Targets (issue 14)


def targets(runs: list[dict]) -> list[tuple[str, str, bool]]:
    rows = []
    for (server, n), by_setting in sorted(latency_groups(runs).items()):
        rows += speedup_targets(server, n, by_setting)
    for r in runs:
        if r["phase"] == "throttle" and r["tool"] == MPU:
            rows += throttle_targets(r)
    return rows


def speedup_targets(server: str, n: int, by_setting) -> list[tuple[str, str, bool]]:
    rows = []
    where = f"{server_label(server)}, N = {n:,}"
    for delay, want in SPEEDUP_AT.items():
        at = by_setting.get(str(delay), {})
        mpu = at.get(MPU)
        for peer in PEERS:
            r = ratio(mpu, at.get(peer))
            if r is not None:
                ok = r >= want and mpu["correct"]
                rows.append(
                    (f"+{delay} ms: mpu-sweeper ≥ {want}× {label(peer)}, {where}", fmt_ratio(r), ok)
                )
    zero, ten = by_setting.get("0", {}).get(MPU), by_setting.get("10", {}).get(MPU)
    if zero and ten:
        share = ten["rate"] / zero["rate"]
        rows.append((
            f"+10 ms: mpu-sweeper ≥ {OWN_RATE_AT_10:.0%} of its +0 ms rate, {where}",
            f"{share:.0%} ({ten['rate']:.0f} of {zero['rate']:.0f}/s)",
            share >= OWN_RATE_AT_10 and ten["correct"],
        ))  # fmt: skip
    return rows


def throttle_targets(r: dict) -> list[tuple[str, str, bool]]:
    thr = r.get("throttle") or {}
    limit = (r.get("throttle_rule") or {}).get("per_second")
    where = f"{server_label(r['server'])}, limit {limit:g}/s"
    share = thr.get("late_accepted_share_of_limit")
    slow = thr.get("late_throttled_share")
    rows = []
    if share is not None:
        rows.append((f"throttling server: throughput ≥ {THROTTLE_RATE_SHARE:.0%} of the limit, {where}",
                     f"{share:.0%} after 10 s ({r['rate'] / limit:.0%} over the whole run)",
                     share >= THROTTLE_RATE_SHARE and r["correct"]))  # fmt: skip
    if slow is not None:
        rows.append((f"throttling server: < {THROTTLED_AFTER_WARMUP:.0%} of requests throttled after 10 s, {where}",
                     f"{slow:.1%} of the throttled operation ({thr.get('late_throttled_share_all', 0):.1%} of all)",
                     slow < THROTTLED_AFTER_WARMUP))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# Charts


def charts(results_dir: Path, runs: list[dict]) -> list[str]:
    written = []
    groups = latency_groups(runs)
    if groups:
        latency_chart(results_dir / "latency.png", groups)
        written.append("latency.png")
    if any(r.get("proxy") for r in runs):
        inflight_chart(results_dir / "inflight.png", runs)
        written.append("inflight.png")
    return written


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(path: Path, groups) -> None:
    plt = _plt()
    keys = sorted(groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 5.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        by_setting = groups[key]
        settings = list(by_setting)
        for tool in [x for x in t.TOOLS if any(x in by_setting[s] for s in settings)]:
            pts = [
                (i, by_setting[s][tool]) for i, s in enumerate(settings) if tool in by_setting[s]
            ]
            xs, ys = [i for i, _ in pts], [r["rate"] for _, r in pts]
            ax.plot(xs, ys, marker="o", label=label(tool))
            bad = [(i, r["rate"]) for i, r in pts if not r["correct"]]
            if bad:
                ax.scatter(*zip(*bad), marker="x", color="red", zorder=5)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(["direct" if s == "direct" else f"+{s} ms" for s in settings])
        ax.set_yscale("log")
        ax.set_xlabel("added round trip per request (through the fault proxy)")
        ax.set_ylabel("stale uploads aborted per second (log)")
        ax.set_title(f"{server_label(key[0])}, N={key[1]:,} (red x: not correct)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _inflight_panels(runs: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(server, title, mpu-sweeper runs) per proxied setting, in run order."""
    panels: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("proxy") and r["tool"] in (MPU, NOV):
            title = (
                "throttled" if r["phase"] == "throttle" else f"+{r['delay_ms']} ms, N={r['n']:,}"
            )
            panels.setdefault((r["server"], title), []).append(r)
    return [(s, title, rs) for (s, title), rs in panels.items()]


def inflight_chart(path: Path, runs: list[dict]) -> None:
    plt = _plt()
    panels = _inflight_panels(runs)
    servers = sorted({s for s, _, _ in panels})
    cols = max(sum(1 for s, _, _ in panels if s == server) for server in servers)
    fig, axes = plt.subplots(
        len(servers), cols, figsize=(4.5 * cols, 3.6 * len(servers)), squeeze=False
    )
    for row, server in enumerate(servers):
        mine = [p for p in panels if p[0] == server]
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(mine):
                ax.axis("off")
                continue
            _inflight_panel(ax, server, *mine[col][1:])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _inflight_panel(ax, server: str, title: str, rs: list[dict]) -> None:
    for i, r in enumerate(rs):
        color = f"C{i}"
        series = r["proxy"]["inflight"]
        if series:
            ax.plot(
                [p[0] for p in series],
                [p[1] for p in series],
                color=color,
                lw=1,
                label=f"{label(r['tool'])}: in flight",
            )
        limit = r.get("limit") or []
        if limit:
            ax.step(
                [p[0] for p in limit],
                [p[1] for p in limit],
                where="post",
                color=color,
                ls="--",
                lw=1,
                label="its logged limit",
            )
    ax.set_title(f"{server_label(server)}, {title}", fontsize=9)
    ax.set_xlabel("s since the tool started", fontsize=8)
    ax.set_ylabel("requests", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=6)
