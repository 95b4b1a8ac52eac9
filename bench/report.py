"""Turns results.json into results.md (tables) and throughput.png (chart).

    python report.py [RESULTS_DIR]      re-renders from RESULTS_DIR/results.json

Every ratio is between runs of the same benchmark run, on the same machine and server.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import benchlib as b
import report_latency
import report_operator
import tools as t

TARGET_SPEEDUP = {"boto3": 3, "rclone": 3, "awscli": 50, "s3cmd": 50}
CEILING_TARGET = 0.85
RSS_TARGET_MB = 30
RSS_FLAT = 0.15
# mpu-sweeper (defaults) on loopback in the committed run before issue 14 (2026-11-23, 27ad7b0):
# issue 14 asks that the defaults stay within 10% of it.
LOOPBACK_BEFORE = {("ceph", 2000): 404.64, ("ceph", 20000): 227.47, ("seaweedfs", 2000): 824.29, ("seaweedfs", 20000): 756.98}
LOOPBACK_KEEP = 0.90


def mib(kb) -> str:
    return "–" if kb is None else f"{kb / 1024:.1f}"


def mb(kb) -> float:
    return kb * 1024 / 1e6


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def label(tool: str) -> str:
    return t.TOOLS[tool].label if tool in t.TOOLS else tool


def note(r: dict) -> str:
    parts = []
    if r["capped"] and r["aborted"] == 0:
        parts.append(f"**did not finish**: aborted nothing in the {r['cap_s']:.0f} s cap")
    elif r["capped"]:
        parts.append(
            f"**did not finish**: {r['aborted']} of {r['n']} in the {r['cap_s']:.0f} s cap"
            + (f"; projected {hms(r['projected_s'])} for all" if r.get("projected_s") else "")
        )
    else:
        if r["stale_left"]:
            parts.append(f"**left {r['stale_left']} of {r['n']} stale uploads**")
        if r["exit_code"] not in (0, None):
            parts.append(f"exit {r['exit_code']}")
    if r["fresh_missing"]:
        parts.append(f"**aborted {r['fresh_missing']} fresh uploads**")
    return "; ".join(parts)


def cpu(r: dict) -> str:
    tool = "–" if r.get("tool_cpu_s") is None else f"{r['tool_cpu_s']:.1f}"
    server = "–" if r.get("server_cpu_s") is None else f"{r['server_cpu_s']:.1f}"
    return f"{tool} / {server}"


def ratio(a, b_) -> float | None:
    """a ÷ b; infinite when b aborted nothing at all (a tool that did no work is never a win)."""
    if not a:
        return None
    return a / b_ if b_ else math.inf


def fmt_ratio(x) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else f"{x:.1f}×"


def compare_groups(runs):
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        if r["phase"] == "compare":
            groups.setdefault((r["server"], r["n"]), []).append(r)
    return groups


def find(group, tool):
    return next((r for r in group if r["tool"] == tool), None)


def ceiling(runs, server):
    good = [r for r in runs if r["server"] == server and r["correct"]]
    return max(good, key=lambda r: r["rate"], default=None)


def write(results_dir: Path, data: dict) -> None:
    md = render(data)
    (results_dir / "results.md").write_text(md)
    written = ["results.md"]
    if chart(results_dir / "throughput.png", data):
        written.append("throughput.png")
    written += report_latency.charts(results_dir, data["runs"])
    if report_operator.chart(results_dir / "operator.png", data.get("operator")):
        written.append("operator.png")
    b.log(f"wrote {', '.join(written)} in {results_dir}")


# --------------------------------------------------------------------------------------------


def render(data: dict) -> str:
    meta, runs = data["meta"], data["runs"]
    cfg = meta["config"]
    m = meta["machine"]
    out = ["# mpu-sweeper benchmark results", ""]
    out += [
        f"One run of `bench/run.sh`, {meta['started']} to {meta.get('finished', '(unfinished)')}."
        " All figures below come from this one run"
        f"{' (but the memory table: see there)' if meta.get('memory_run') else ''}, on the same"
        " machine and servers; every ratio is between two of its runs. Timings are wall clock, from process start to exit, listing"
        " included; aborts/s counts stale uploads really gone afterwards (checked by listing).",
        "",
        f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, kernel {m['kernel']},"
        f" {m['os']}",
        f"- Load at start: `{meta['uptime_start']}`",
        f"- Load at end: `{meta.get('uptime_end', '?')}`",
        "- The load average counts runnable threads, the servers' thread pools and the fill"
        " clients' threads included, so it passes 2 with nothing else running; whether other"
        " work shared the machine is said in [analysis.md](analysis.md).",
        f"- Data: N stale uploads per bucket (each with {cfg['parts']} part(s) of"
        f" {cfg['part_bytes']} bytes) plus {cfg['fresh']} fresh uploads that must survive; one"
        " bucket per tool and N, filled concurrently beforehand (not timed). On Ceph the stale"
        " uploads are created 3 days back through the libfaketime gateway and tools get a 1-day"
        " cutoff; on SeaweedFS they are created first, the fresh ones after a gap longer than the"
        " cap, and each tool's cutoff is set just after the stale set when it starts.",
        f"- Time cap per tool run: {cfg['cap']:.0f} s; {cfg['loop_cap']:.0f} s for the aws-cli and"
        f" s3cmd loops (a process per upload); {cfg.get('memory_cap', cfg['cap']):.0f} s for the"
        " memory runs. A run stopped by the cap is reported as not finished, with its measured"
        " pace and the time it would need at that pace.",
        "",
    ]
    if (Path(cfg["results_dir"]) / "analysis.md").exists():
        out += ["What limits each figure, and what was changed: [analysis.md](analysis.md).", ""]

    groups = compare_groups(runs)
    if groups:
        out += ["## Comparison with the tools people use", ""]
        for (server, n), group in sorted(groups.items()):
            mpu = find(group, "mpu-sweeper")
            nov = find(group, "mpu-sweeper-no-verify")
            out += [
                f"### {server_label(server)}, N = {n:,}",
                "",
                "| tool | wall (s) | stale aborted | aborts/s | peak RSS (MiB) | CPU s: tool / server"
                " | mpu-sweeper ÷ tool | mpu-sweeper --no-verify ÷ tool | correct | notes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
            ]
            for r in group:
                out.append(
                    f"| {label(r['tool'])} | {r['wall_s']:.1f} | {r['aborted']:,} / {r['n']:,}"
                    f" | {r['rate']:.1f} | {mib(r['peak_rss_kb'])} | {cpu(r)}"
                    f" | {fmt_ratio(ratio(mpu and mpu['rate'], r['rate']))}"
                    f" | {fmt_ratio(ratio(nov and nov['rate'], r['rate']))}"
                    f" | {'yes' if r['correct'] else 'no'} | {note(r)} |"
                )
            out.append("")
        out += [
            "Peak RSS is the largest single process of the run: for the aws-cli and s3cmd loops"
            " that is one `aws`/`s3cmd` process; for the rest, the tool itself. CPU seconds are"
            " user + system time of the tool's processes (GNU time; – for a capped run) and of the"
            " server's processes (radosgw main gateway + ceph-osd, or `weed mini`) over the run;"
            " the two share the machine's 2 cores, so wall time ≥ (tool + server CPU) / 2.",
            "",
        ]

    curve = [r for r in runs if r["phase"] == "curve"]
    ceil = {s: ceiling(runs, s) for s in ("ceph", "seaweedfs")}
    if curve:
        out += [
            f"## Ceph RGW's ceiling: mpu-sweeper's concurrency curve (N = {curve[0]['n']:,} per run)",
            "",
            "| concurrency | --no-verify aborts/s | CPU s: tool / server | defaults (verify) aborts/s"
            " | CPU s: tool / server | correct |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        levels = sorted({r["concurrency"] for r in curve})
        for c in levels:
            nv = next((r for r in curve if r["concurrency"] == c and r["tool"] == "mpu-sweeper-no-verify"), None)
            dv = next((r for r in curve if r["concurrency"] == c and r["tool"] == "mpu-sweeper"), None)
            ok = all(r["correct"] for r in (nv, dv) if r)
            out.append(
                f"| {c}{' (default)' if c == 16 else ''} | {nv['rate'] if nv else '–'}"
                f" | {cpu(nv) if nv else '–'} | {dv['rate'] if dv else '–'}"
                f" | {cpu(dv) if dv else '–'} | {'yes' if ok else 'no'} |"
            )
        out.append("")
    for server, best in ceil.items():
        if best and (curve or groups):
            at = f" at concurrency {best['concurrency']}" if best["concurrency"] else ""
            out.append(
                f"- {server_label(server)} ceiling (best rate of any correct run on it, any tool,"
                f" any phase): **{best['rate']:.1f} aborts/s**, by {label(best['tool'])}{at}"
                f" ({best['phase']}, N = {best['n']:,})."
            )
    out.append("")

    mem = [r for r in runs if r["phase"] == "memory"]
    if mem:
        out += [
            f"## mpu-sweeper's memory ({server_label(mem[0]['server'])}, the faster server in this"
            " run; defaults; real aborts)",
            "",
        ]
        rerun = meta.get("memory_run")
        if rerun:
            out += [
                f"These runs come from a second invocation ({rerun['started']} to"
                f" {rerun['finished']}; load `{rerun['uptime_start']}` → `{rerun['uptime_end']}`):"
                f" {rerun['why']}",
                "",
            ]
        out += [
            "| stale uploads | wall (s) | aborts/s | peak RSS (MiB) | peak RSS (MB) | correct |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for r in mem:
            out.append(
                f"| {r['n']:,} | {r['wall_s']:.1f} | {r['rate']:.1f} | {mib(r['peak_rss_kb'])}"
                f" | {mb(r['peak_rss_kb']):.1f} | {'yes' if r['correct'] else 'no'} |"
            )
        out += ["", f"(stale uploads here have {cfg['memory_parts']} parts; memory follows the"
                " listing page and the aborts in flight, not the parts)", ""]

    out += report_latency.render(runs)
    op = data.get("operator")
    out += report_operator.render(op)

    out += targets(data, groups, ceil, mem)
    out += issue14_targets(data, groups, op)
    out += ["## Versions", "", "| component | version |", "|---|---|"]
    for k, v in meta.get("versions", {}).items():
        out.append(f"| {k} | {v.replace('|', '/')} |")
    out += ["", "## Settings of this run", "", "```json", json.dumps(cfg, indent=1), "```", ""]
    return "\n".join(out)


def targets(data, groups, ceil, mem) -> list[str]:
    rows = []
    ceph = {n: g for (s, n), g in groups.items() if s == "ceph"}
    if ceph:
        n = max(ceph)
        group = ceph[n]
        mpu = find(group, "mpu-sweeper")
        nov = find(group, "mpu-sweeper-no-verify")
        for tool, want in TARGET_SPEEDUP.items():
            peer = find(group, tool)
            if not (mpu and peer):
                continue
            r = ratio(mpu["rate"], peer["rate"])
            rn = ratio(nov and nov["rate"], peer["rate"])
            how = " (peer capped: its measured pace)" if peer["capped"] else ""
            if peer["aborted"] == 0:
                how = f" (peer aborted nothing in {peer['wall_s']:.0f} s)"
            if not peer["correct"] and not peer["capped"]:
                how = " (peer left work undone)"
            rows.append(
                (
                    f"mpu-sweeper ≥ {want}× {label(tool)}, Ceph, N = {n:,}",
                    f"{fmt_ratio(r)} (--no-verify {fmt_ratio(rn)}){how}",
                    r is not None and r >= want and mpu["correct"],
                )
            )
    best = ceil.get("ceph")
    curve = [r for r in data["runs"] if r["phase"] == "curve"]
    if best:
        default = find([r for r in curve if r["concurrency"] == 16], "mpu-sweeper")
        default_nv = find([r for r in curve if r["concurrency"] == 16], "mpu-sweeper-no-verify")
        if default:
            share = default["rate"] / best["rate"]
            nv = f", --no-verify at 16: {default_nv['rate'] / best['rate']:.0%}" if default_nv else ""
            rows.append(
                (
                    f"default concurrency (16) within {CEILING_TARGET:.0%} of Ceph's ceiling",
                    f"defaults: {share:.0%} ({default['rate']:.0f} of {best['rate']:.0f}/s){nv}",
                    share >= CEILING_TARGET,
                )
            )
    if mem:
        by_n = {r["n"]: r for r in mem}
        big = by_n.get(max(by_n))
        if big and big["peak_rss_kb"]:
            # A run stopped by the cap measured memory over part of the work only.
            partial = (
                ""
                if big["correct"]
                else f" (run stopped by the cap after {big['aborted']:,} of {big['n']:,})"
            )
            rows.append(
                (
                    f"peak RSS at N = {big['n']:,} ≤ {RSS_TARGET_MB} MB",
                    f"{mb(big['peak_rss_kb']):.1f} MB{partial}",
                    mb(big["peak_rss_kb"]) <= RSS_TARGET_MB and big["correct"],
                )
            )
            mid = by_n.get(10000)
            if mid and mid["peak_rss_kb"]:
                grow = big["peak_rss_kb"] / mid["peak_rss_kb"] - 1
                rows.append(
                    (
                        f"peak RSS at N = {big['n']:,} within {RSS_FLAT:.0%} of N = 10,000",
                        f"{grow:+.1%}{partial}",
                        grow <= RSS_FLAT and big["correct"],
                    )
                )
    if not rows:
        return []
    return target_table("Targets (issue 5), measured in this run", rows)


def target_table(title: str, rows) -> list[str]:
    if not rows:
        return []
    out = [f"## {title}", "", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {a} | {m} | {'**yes**' if ok else '**no**'} |" for a, m, ok in rows]
    return out + [""]


def loopback_targets(groups) -> list[tuple[str, str, bool]]:
    rows = []
    for (server, n), group in sorted(groups.items()):
        mpu, before = find(group, "mpu-sweeper"), LOOPBACK_BEFORE.get((server, n))
        if mpu and before:
            share = mpu["rate"] / before
            rows.append((
                f"loopback, defaults within {1 - LOOPBACK_KEEP:.0%} of the rate before ({before:.0f}/s),"
                f" {server_label(server)}, N = {n:,}",
                f"{mpu['rate']:.0f}/s ({share:.0%})",
                share >= LOOPBACK_KEEP and mpu["correct"],
            ))  # fmt: skip
    return rows


def issue14_targets(data, groups, op) -> list[str]:
    rows = report_latency.targets(data["runs"]) + loopback_targets(groups)
    rows += report_operator.targets(op)
    return target_table("Targets (issue 14), measured in this run", rows)


def server_label(name: str) -> str:
    return {"ceph": "Ceph RGW", "seaweedfs": "SeaweedFS"}.get(name, name)


# --------------------------------------------------------------------------------------------


def chart(path: Path, data: dict) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    runs = data["runs"]
    groups = compare_groups(runs)
    curve = [r for r in runs if r["phase"] == "curve"]
    mem = [r for r in runs if r["phase"] == "memory"]
    panels = [p for p in ("compare", "curve", "memory") if {"compare": groups, "curve": curve, "memory": mem}[p]]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6.5), squeeze=False)
    axes = axes[0]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {name: palette[i % len(palette)] for i, name in enumerate(t.TOOLS)}

    for ax, panel in zip(axes, panels):
        if panel == "compare":
            keys = sorted(groups)
            tool_names = [x for x in t.TOOLS if any(find(groups[k], x) for k in keys)]
            width = 0.8 / max(len(tool_names), 1)
            for i, tool in enumerate(tool_names):
                for j, k in enumerate(keys):
                    r = find(groups[k], tool)
                    if not r or not r["rate"]:
                        continue
                    ax.bar(
                        j + i * width, r["rate"], width, color=color[tool],
                        hatch=None if r["correct"] else "//", edgecolor="black", linewidth=0.5,
                    )  # fmt: skip
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
            ax.set_xticklabels([f"{server_label(s)}\nN={n:,}" for s, n in keys])
            ax.set_yscale("log")
            ax.set_ylabel("stale uploads aborted per second (log)")
            ax.set_title("Throughput per tool (hatched: did not finish or not correct)")
            handles = [Patch(facecolor=color[x], edgecolor="black", label=label(x)) for x in tool_names]
            ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        elif panel == "curve":
            for mode in ["mpu-sweeper-no-verify", "mpu-sweeper"]:
                pts = sorted((r["concurrency"], r["rate"]) for r in curve if r["tool"] == mode)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=color[mode], label=label(mode))
            best = ceiling(runs, "ceph")
            if best:
                ax.axhline(best["rate"], ls="--", color="grey", label=f"ceiling {best['rate']:.0f}/s")
                ax.axhline(best["rate"] * CEILING_TARGET, ls=":", color="grey", label="85% of ceiling")
            ax.axvline(16, ls=":", color="black", lw=0.8)
            ax.set_xscale("log", base=2)
            levels = sorted({r["concurrency"] for r in curve})
            ax.set_xticks(levels)
            ax.set_xticklabels([str(c) for c in levels])
            ax.set_xlabel("--concurrency (16 is the default)")
            ax.set_ylabel("aborts/s")
            ax.set_ylim(bottom=0)
            ax.set_title(f"mpu-sweeper on Ceph RGW, N={curve[0]['n']:,} per run")
            ax.legend(fontsize=8)
        else:
            pts = sorted((r["n"], mb(r["peak_rss_kb"] or 0)) for r in mem)
            ax.plot(*zip(*pts), marker="o", color=color["mpu-sweeper"], label="peak RSS")
            ax.axhline(RSS_TARGET_MB, ls="--", color="grey", label=f"target {RSS_TARGET_MB} MB")
            ax.set_xscale("log")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("stale uploads swept")
            ax.set_ylabel("peak RSS (MB)")
            ax.set_title(f"mpu-sweeper memory ({server_label(mem[0]['server'])})")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else b.BENCH_DIR / "results"
    write(directory, json.loads((directory / "results.json").read_text()))
