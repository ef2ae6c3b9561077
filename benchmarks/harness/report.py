"""The plain-text table of a result's headline figures (the JSON holds everything)."""

from __future__ import annotations

import math


def _fmt(v: object, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.2f}{unit}"
    return f"{v}{unit}"


def table(result: dict) -> str:
    """The headline figures as a plain-text table (medians over the repeats)."""
    rows: list[tuple[str, str]] = []
    p = result.get("pipeline")
    if p:
        rows += [
            ("pipeline events/s (first batch to last handled)", _fmt(p.get("events_per_s"))),
            ("pipeline steady events/s (10% to 90% handled)", _fmt(p.get("steady_events_per_s"))),
            ("pipeline worker CPU per event", _fmt(p.get("cpu_us_per_event"), " us")),
            ("broker cores busy during the backlog", _fmt(p.get("broker_cores"))),
            ("worker start-up to /readyz", _fmt(p.get("startup_s"), " s")),
            ("stall: first batch to first event handled", _fmt(p.get("stall_s"), " s")),
            ("worker RSS after backlog", _fmt(p.get("worker_rss_mb"), " MiB")),
        ]
    for name, b in (result.get("baselines") or {}).items():
        rows.append((f"{name} events/s", _fmt(b.get("events_per_s"))))
        rows.append((f"{name} CPU per event", _fmt(b.get("cpu_us_per_event"), " us")))
    for name, r in (result.get("ratios") or {}).items():
        rows.append((f"ratio {name}", _fmt(r, "x")))
    lat = result.get("latency")
    if lat and "latency_ms" in lat:
        rows.append(("latency offered / achieved events/s",
                     f"{_fmt(lat['offered_events_per_s'])} / {_fmt(lat['achieved_events_per_s'])}"))  # fmt: skip
        for q in ("p50", "p95", "p99"):
            rows.append((f"event-to-signal {q} (signal Kafka ts)", _fmt(lat["latency_ms"][q], " ms")))
        rows.append(("event-to-signal p99 (received)", _fmt(lat["receive_latency_ms"]["p99"], " ms")))
        rows.append(("signals matched", _fmt(lat["signals_matched"])))
        rows.append(("worker CPU per event under that load", _fmt(lat.get("worker_cpu_us_per_event"), " us")))
        rows.append(("worker cores busy under that load", _fmt(lat.get("worker_cores"))))
        rows.append(("broker cores busy under that load", _fmt(lat.get("broker_cores"))))
        shape = lat.get("batches")
        if shape:
            rows.append(("batches per second under that load (ingest + process)", _fmt(shape["per_s"])))
            rows.append(("events per batch under that load", _fmt(shape["mean_events"])))
    for k, sc in (result.get("scaling") or {}).items():
        rows.append((f"scaling: {k} partition(s) and worker(s), events/s", _fmt(sc.get("events_per_s"))))
        rows.append((f"scaling: {k} partition(s) and worker(s), CPU per event", _fmt(sc.get("cpu_us_per_event"), " us")))
        runs = sc.get("runs", [])
        rows.append((f"scaling: {k} partition(s) and worker(s), complete runs",
                     f"{sum(bool(r.get('complete')) for r in runs)} of {len(runs)}"))  # fmt: skip
        rows.append((f"scaling: {k} partition(s) and worker(s), events redelivered (per run)",
                     " / ".join(_fmt(r.get("redelivered")) for r in runs)))  # fmt: skip
    g = result.get("guarantees")
    if g:
        for name in ("at_least_once", "exactly_once"):
            rows.append((f"{name}: events/s", _fmt(g[name].get("events_per_s"))))
            rows.append((f"{name}: worker CPU per event", _fmt(g[name].get("cpu_us_per_event"), " us")))
        rows.append(("exactly_once / at_least_once events/s", _fmt(g.get("events_per_s_exactly_once_vs_at_least_once"), "x")))
    st = result.get("state")
    if st:
        rows += [("state bytes/user", _fmt(st.get("bytes_per_user"))), ("state updates/s", _fmt(st.get("updates_per_s"))),
                 ("table record bytes/user (state + policy + pending labels)", _fmt(st.get("record_bytes_per_user")))]  # fmt: skip
    rs = result.get("restart")
    if rs:
        rows += [
            (f"restart with {rs.get('users'):,} users: ready in", _fmt(rs.get("restart_ready_s"), " s")),
            ("cold start (empty store): ready in", _fmt(rs.get("cold_ready_s"), " s")),
            ("first event handled after the restart in", _fmt(rs.get("first_event_after_restart_s"), " s")),
        ]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:>14}" for k, v in rows)
