"""What a run looked like from the proxy and from mpu-sweeper's own log: requests in flight over
time, answers by operation and status, how much was throttled, and the concurrency limit the
sweep logged.

Times are seconds since the tool's process started: the proxy's record clock is moved onto the
wall clock with the offset measured by Proxy.clock_offset(), and mpu-sweeper's JSON log lines
carry wall-clock timestamps.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path

MAX_POINTS = 300  # points per time series kept in results.json
WARMUP_S = 10.0  # throttling is judged after this many seconds of the run


def shift(records: list[dict], offset: float, start: float) -> list[dict]:
    """The run's records (the calibration request dropped) with times since the tool started."""
    out = []
    for r in records[1:]:
        started = r["started"] + offset - start
        finished = r["finished"] + offset - start if r["finished"] is not None else None
        out.append({**r, "started": started, "finished": finished})
    return out


def _events(records: list[dict], end: float) -> list[tuple[float, int]]:
    events = []
    for r in records:
        events.append((r["started"], 1))
        events.append((r["finished"] if r["finished"] is not None else end, -1))
    events.sort()
    return events


def inflight_series(records: list[dict]) -> list[list[float]]:
    """[[t, mean in flight, peak in flight], ...] over bins covering the run (≤ MAX_POINTS)."""
    if not records:
        return []
    first = min(r["started"] for r in records)
    end = max((r["finished"] or r["started"]) for r in records)
    width = max(0.05, (end - first) / MAX_POINTS)
    bins = int((end - first) / width) + 1
    area, peak = [0.0] * bins, [0] * bins
    level, now = 0, first
    for t, step in _events(records, end):
        _spread(area, peak, first, width, now, t, level)
        level += step
        now = t
        if step > 0:
            i = min(int((t - first) / width), bins - 1)
            peak[i] = max(peak[i], level)
    return [
        [round(first + (i + 0.5) * width, 3), round(area[i] / width, 2), peak[i]]
        for i in range(bins)
    ]


def _spread(
    area: list[float], peak: list[int], first: float, width: float, a: float, z: float, level: int
) -> None:
    """Adds `level` requests in flight from `a` to `z` to the bins' areas and peaks."""
    if level == 0 or z <= a:
        return
    i = int((a - first) / width)
    while a < z and i < len(area):
        edge = min(z, first + (i + 1) * width)
        area[i] += level * (edge - a)
        peak[i] = max(peak[i], level)
        a, i = edge, i + 1


def counts(records: list[dict]) -> dict:
    """Requests by operation and by status; answer times (ms) by operation."""
    by_op: dict[str, dict] = {}
    for r in records:
        op = by_op.setdefault(r["op"], {"requests": 0, "status": {}, "ms": []})
        op["requests"] += 1
        op["status"][str(r["status"])] = op["status"].get(str(r["status"]), 0) + 1
        if r["finished"] is not None:
            op["ms"].append((r["finished"] - r["started"]) * 1e3)
    for op in by_op.values():
        ms = sorted(op.pop("ms"))
        op["p50_ms"] = round(ms[len(ms) // 2], 2) if ms else None
        op["p90_ms"] = round(ms[int(len(ms) * 0.9)], 2) if ms else None
    return by_op


def throttling(records: list[dict], ops: list[str], per_second: float) -> dict:
    """Throttled share and accepted rate of the throttled operations, after WARMUP_S."""
    mine = [r for r in records if not ops or r["op"] in ops]
    late = [r for r in mine if r["started"] >= WARMUP_S]
    if not late:
        return {"late_requests": 0}
    slow = sum(r["status"] == 503 for r in late)
    late_all = [r for r in records if r["started"] >= WARMUP_S]
    accepted = [r for r in late if 200 <= r["status"] < 300 or r["status"] == 404]
    span = max(r["started"] for r in late) - WARMUP_S
    rate = len(accepted) / span if span > 0 else None
    return {
        "rate_limit": per_second,
        "late_requests": len(late),
        "late_throttled": slow,
        "late_throttled_share": round(slow / len(late), 4),
        "late_throttled_share_all": round(
            sum(r["status"] == 503 for r in late_all) / len(late_all), 4
        ),
        "late_accepted_per_s": round(rate, 2) if rate else None,
        "late_accepted_share_of_limit": round(rate / per_second, 4) if rate else None,
        "all_throttled": sum(r["status"] == 503 for r in mine),
        "all_requests": len(mine),
    }


def summary(records: list[dict]) -> dict:
    """The figures kept for every proxied run."""
    series = inflight_series(records)
    busy = [mean for _, mean, _ in series if mean > 0]
    return {
        "requests": len(records),
        "by_op": counts(records),
        "throttled": sum(r["status"] == 503 for r in records),
        "inflight_peak": max((p for _, _, p in series), default=0),
        # The middle half of the busy bins: what the run settled on, not its start or drain.
        "inflight_settled": round(statistics.median(_middle(busy)), 1) if busy else None,
        "inflight": series,
    }


def _middle(values: list[float]) -> list[float]:
    n = len(values)
    return values[n // 4 : max(n - n // 4, n // 4 + 1)]


# --------------------------------------------------------------------------------------------
# mpu-sweeper's own log: "concurrency round" lines (debug, target mpu_sweeper::sweep)


def _epoch(stamp: str) -> float:
    """RFC 3339 with any number of fractional digits, as tracing writes it."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(head).replace(tzinfo=dt.timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def limit_series(log_path: Path, start: float) -> list[list[float]]:
    """[[t, limit, median ms], ...] from the JSON log lines that report a concurrency limit."""
    points = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "limit" not in entry or "timestamp" not in entry:
            continue
        t = _epoch(entry["timestamp"]) - start
        points.append([round(t, 3), entry["limit"], round(float(entry.get("median_ms", 0)), 2)])
    step = max(1, len(points) // MAX_POINTS)
    return points[::step] if step > 1 else points
