"""Trace statistics: the quantities a device designer reads off a trace (and later issues use as task metrics)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from phantom.trace import Direction, SemClass, TlpType, TraceColumns, load_any_columns

# TLP overhead on the wire in bytes: framing (2+4 Gen3 STP), sequence (2), header (12/16), LCRC (4)
_TLP_OVERHEAD_3DW = 24
_TLP_OVERHEAD_4DW = 28
# usable bandwidth per lane after 128b/130b (Gen3+) or 8b/10b (Gen1/2), bytes per ns
_LANE_GBPS = {1: 2.5 * 0.8, 2: 5.0 * 0.8, 3: 8.0 * 128 / 130, 4: 16.0 * 128 / 130, 5: 32.0 * 128 / 130}


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def match_reads(tc: TraceColumns) -> tuple[np.ndarray, np.ndarray]:
    """(request index, final-completion index) of every memory read that completed successfully or not."""
    types = tc["type"].tolist()
    rid = tc["requester_id"].tolist()
    tag = tc["tag"].tolist()
    bc = tc["byte_count"].tolist()
    ln = tc["length"].tolist()
    la = tc["lower_address"].tolist()
    st = tc["status"].tolist()
    reads = {TlpType.MRd32.value, TlpType.MRd64.value}
    cpld, cpl = TlpType.CplD.value, TlpType.Cpl.value
    open_: dict[tuple[int, int], int] = {}
    req, done = [], []
    for i, t in enumerate(types):
        if t in reads:
            open_[(rid[i], tag[i])] = i
        elif t == cpld or t == cpl:
            key = (rid[i], tag[i])
            if key in open_ and (t == cpl or st[i] != 0 or bc[i] <= ln[i] * 4 - (la[i] & 3)):
                req.append(open_.pop(key))
                done.append(i)
    return np.asarray(req, dtype=np.int64), np.asarray(done, dtype=np.int64)


def read_latencies(tc: TraceColumns) -> tuple[np.ndarray, np.ndarray]:
    """(latency_ns, request class) for every memory read, request to its final completion."""
    req, done = match_reads(tc)
    t = tc["t_ps"].astype(np.int64)
    return (t[done] - t[req]) / 1000.0, tc["cls"][req].astype(np.int64)


def outstanding_depth(tc: TraceColumns) -> tuple[np.ndarray, np.ndarray]:
    """Device read requests in flight over time: (t_ps, depth) after each request or final completion."""
    req, done = match_reads(tc)
    up_reads = np.flatnonzero(np.isin(tc["type"], [TlpType.MRd32, TlpType.MRd64]) & (tc["dir"] == Direction.UP))
    dev = np.isin(req, up_reads)
    idx = np.concatenate([up_reads, done[dev]])
    step = np.concatenate([np.ones(len(up_reads), np.int64), -np.ones(int(dev.sum()), np.int64)])
    order = np.argsort(idx, kind="stable")
    return tc["t_ps"][idx[order]].astype(np.int64), np.cumsum(step[order])


def alignment_histogram(addresses: np.ndarray, cap: int = 4096) -> dict[int, int]:
    """Largest power of two (up to cap) dividing each address -> count."""
    a = addresses.astype(np.int64)
    al = np.full(len(a), cap, dtype=np.int64)
    nz = (a % cap) != 0
    al[nz] = (a[nz] & -a[nz])
    return {int(k): int(v) for k, v in sorted(Counter(al.tolist()).items())}


def autocorr(x: np.ndarray, lags: int = 5) -> list[float]:
    if len(x) <= lags + 1 or x.std() == 0:
        return [float("nan")] * lags
    x = x - x.mean()
    d = float((x * x).sum())
    return [float((x[:-k] * x[k:]).sum() / d) for k in range(1, lags + 1)]


def classify_from_map(tc: TraceColumns) -> np.ndarray:
    """Semantic classes re-derived from the header's memory map (for traces whose records carry none)."""
    from phantom.memmap import MemoryMap

    mm = MemoryMap.from_json(tc.header.memory_map)
    types = tc["type"].tolist()
    dirs = tc["dir"].tolist()
    addrs = tc["address"].tolist()
    return np.array([int(mm.classify(TlpType(t), Direction(d), a)) for t, d, a in zip(types, dirs, addrs)],
                    dtype=np.uint8)


def summarize(path_or_cols: str | Path | TraceColumns, bins_us: float = 10.0) -> dict[str, Any]:
    """A dict of trace statistics (JSON-serialisable)."""
    tc = path_or_cols if isinstance(path_or_cols, TraceColumns) else load_any_columns(path_or_cols)
    h = tc.header
    notes = []
    if len(tc) and not (tc["cls"] != SemClass.OTHER).any():
        if h.memory_map:
            tc.cols["cls"] = classify_from_map(tc)
            notes.append("semantic classes derived from the header's memory map")
        else:
            notes.append("records carry no semantic classes and the header no memory map: per-class figures "
                         "are over all device requests")
    n = len(tc)
    t = tc["t_ps"].astype(np.int64)
    dur_ps = int(t.max() - t.min()) if n else 0
    types = tc["type"]
    dirs = tc["dir"]
    cls = tc["cls"]
    plen = tc["payload_len"].astype(np.int64)
    by_type: dict[str, dict[str, int]] = {}
    for d in Direction:
        m = dirs == d
        c = Counter(types[m].tolist())
        by_type[d.name.lower()] = {TlpType(k).name: int(v) for k, v in sorted(c.items())}
    by_class = {SemClass(k).name.lower(): int(v) for k, v in sorted(Counter(cls.tolist()).items())}
    # link utilisation: wire bytes / capacity over the trace's span, per direction
    is4 = (types & 0x20) != 0
    wire = plen + np.where(is4, _TLP_OVERHEAD_4DW, _TLP_OVERHEAD_3DW)
    cap_bytes_per_ns = _LANE_GBPS.get(h.link_speed, 8.0) * h.link_width / 8.0
    util = {}
    payload_bytes = {}
    for d in Direction:
        m = dirs == d
        payload_bytes[d.name.lower()] = int(plen[m].sum())
        util[d.name.lower()] = float(wire[m].sum() / (cap_bytes_per_ns * dur_ps / 1000.0)) if dur_ps else 0.0
    lat, lk = read_latencies(tc)
    req, done = match_reads(tc)
    dev = tc["dir"][req] == Direction.UP if len(req) else np.zeros(0, bool)
    classed = np.isin(lk, [SemClass.DESC_READ, SemClass.DATA_READ])
    dev_lat = lat[classed] if classed.any() else lat[dev]
    # request sizes
    rd = np.isin(types, [TlpType.MRd32, TlpType.MRd64]) & (dirs == Direction.UP)
    wr = np.isin(types, [TlpType.MWr32, TlpType.MWr64]) & (dirs == Direction.UP)
    sizes = {"read_bytes": Counter((tc["length"][rd].astype(np.int64) * 4).tolist()),
             "write_bytes": Counter((tc["length"][wr].astype(np.int64) * 4).tolist())}
    up = dirs == Direction.UP
    ia = np.diff(t[up]) / 1000.0 if up.sum() > 1 else np.zeros(0)
    dn = dirs == Direction.DOWN
    ia_down = np.diff(t[dn]) / 1000.0 if dn.sum() > 1 else np.zeros(0)
    # completions per device read (how completers split reads)
    cpl_per_read = _completions_per_read(tc)
    # doorbell to the first DMA that follows it
    db_idx = np.flatnonzero(cls == SemClass.DOORBELL)
    dma_idx = np.flatnonzero(np.isin(cls, [SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE]))
    db_lat = []
    if len(db_idx) and len(dma_idx):
        nxt = np.searchsorted(dma_idx, db_idx)
        ok = nxt < len(dma_idx)
        db_lat = ((t[dma_idx[nxt[ok]]] - t[db_idx[ok]]) / 1000.0).tolist()
    # address alignment and stride of device requests, per class
    align, stride = {}, {}
    for c in (SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE, SemClass.CPL_WRITE):
        m = (cls == c) & (dirs == Direction.UP)
        if m.any():
            addrs = tc["address"][m].astype(np.int64)
            align[c.name.lower()] = alignment_histogram(addrs)
            strides = Counter(np.diff(addrs).tolist()).most_common(10)
            stride[c.name.lower()] = {str(k): int(v) for k, v in strides}
    dt_ps, depth = outstanding_depth(tc)
    if len(depth) > 1:
        w = np.diff(dt_ps)
        depth_mean = float((depth[:-1] * w).sum() / w.sum()) if w.sum() else float(depth.mean())
    else:
        depth_mean = float(depth.mean()) if len(depth) else 0.0
    # TLPs and payload bytes by direction over time
    edges = np.arange(0, dur_ps + bins_us * 1e6 + 1, bins_us * 1e6) if n else np.zeros(1)
    rel = t - (t.min() if n else 0)
    timeline = {"bin_us": bins_us}
    for d in Direction:
        m = dirs == d
        timeline[f"{d.name.lower()}_tlps"] = np.histogram(rel[m], edges)[0].tolist()
        timeline[f"{d.name.lower()}_bytes"] = np.histogram(rel[m], edges, weights=plen[m])[0].astype(np.int64).tolist()
        for ty in np.unique(types[m]):
            mt = m & (types == ty)
            timeline[f"{d.name.lower()}_{TlpType(int(ty)).name}_tlps"] = np.histogram(rel[mt], edges)[0].tolist()
    cpl_writes = int((cls == SemClass.CPL_WRITE).sum())
    type_frac = {f"{d.name.lower()}_{TlpType(int(k)).name}": int(v) / n
                 for d in Direction for k, v in sorted(Counter(types[dirs == d].tolist()).items())} if n else {}
    dma_tlps = int(np.isin(cls, [SemClass.DESC_READ, SemClass.DATA_READ, SemClass.DATA_WRITE, SemClass.CPL_WRITE,
                                 SemClass.INTERRUPT]).sum())
    return {
        "tlps": n, "duration_us": dur_ps / 1e6, "header": h.to_json(), "by_type": by_type, "by_class": by_class,
        "payload_bytes": payload_bytes, "link_utilization": util,
        "read_latency_ns": {"count": int(len(dev_lat)), "p50": _pct(dev_lat, 50), "p99": _pct(dev_lat, 99),
                            "mean": float(dev_lat.mean()) if len(dev_lat) else float("nan")},
        "interrupts": int((cls == SemClass.INTERRUPT).sum()),
        "request_sizes": {k: {str(s): int(c) for s, c in sorted(v.items())} for k, v in sizes.items()},
        "upstream_interarrival_ns": {"p10": _pct(ia, 10), "p50": _pct(ia, 50), "p90": _pct(ia, 90),
                                     "p99": _pct(ia, 99), "autocorr_lag1_5": autocorr(ia)},
        "outstanding_reads": {"max": int(depth.max()) if len(depth) else 0, "time_mean": depth_mean},
        "address_alignment": align, "address_stride_top": stride, "timeline": timeline,
        "downstream_interarrival_ns": {"p50": _pct(ia_down, 50), "p99": _pct(ia_down, 99)},
        "completions_per_read": {"mean": float(cpl_per_read.mean()) if len(cpl_per_read) else float("nan"),
                                 "max": int(cpl_per_read.max()) if len(cpl_per_read) else 0},
        "type_fractions": type_frac,
        "doorbell_to_dma_ns": {"p50": _pct(np.asarray(db_lat), 50), "p99": _pct(np.asarray(db_lat), 99)},
        "tlps_per_packet": (dma_tlps / cpl_writes) if cpl_writes else None,
        "notes": notes,
    }


def _completions_per_read(tc: TraceColumns) -> np.ndarray:
    """Completions each device read (upstream memory read) was answered with."""
    types = tc["type"].tolist()
    dirs = tc["dir"].tolist()
    rid = tc["requester_id"].tolist()
    tag = tc["tag"].tolist()
    bc = tc["byte_count"].tolist()
    ln = tc["length"].tolist()
    la = tc["lower_address"].tolist()
    st = tc["status"].tolist()
    reads = {TlpType.MRd32.value, TlpType.MRd64.value}
    cpls = {TlpType.CplD.value, TlpType.Cpl.value}
    open_: dict[tuple[int, int], int] = {}
    out = []
    for i, t in enumerate(types):
        if t in reads and dirs[i] == Direction.UP:
            open_[(rid[i], tag[i])] = 0
        elif t in cpls and dirs[i] == Direction.DOWN and (rid[i], tag[i]) in open_:
            k = (rid[i], tag[i])
            open_[k] += 1
            if t == TlpType.Cpl.value or st[i] != 0 or bc[i] <= ln[i] * 4 - (la[i] & 3):
                out.append(open_.pop(k))
    return np.asarray(out, dtype=np.int64)


def realism(s: dict[str, Any]) -> dict[str, float]:
    """The realism figures of a summary, flat (what ``phantom stats A --compare B`` puts side by side)."""
    rs = s["request_sizes"]

    def size_mix(d: dict[str, int]) -> tuple[float, float]:
        if not d:
            return float("nan"), float("nan")
        sizes = np.repeat(np.array([int(k) for k in d], dtype=np.int64), [int(v) for v in d.values()])
        return float(np.percentile(sizes, 50)), float(sizes.mean())

    rd50, rdm = size_mix(rs["read_bytes"])
    wr50, wrm = size_mix(rs["write_bytes"])
    out = {
        "TLPs": float(s["tlps"]), "duration (us)": s["duration_us"],
        "DMA read latency p50 (ns)": s["read_latency_ns"]["p50"], "DMA read latency p99 (ns)": s["read_latency_ns"]["p99"],
        "up inter-arrival p50 (ns)": s["upstream_interarrival_ns"]["p50"],
        "up inter-arrival p99 (ns)": s["upstream_interarrival_ns"]["p99"],
        "down inter-arrival p50 (ns)": s["downstream_interarrival_ns"]["p50"],
        "down inter-arrival p99 (ns)": s["downstream_interarrival_ns"]["p99"],
        "read request size p50 (B)": rd50, "read request size mean (B)": rdm,
        "write request size p50 (B)": wr50, "write request size mean (B)": wrm,
        "payload bytes down": float(s["payload_bytes"]["down"]), "payload bytes up": float(s["payload_bytes"]["up"]),
        "reads in flight max": float(s["outstanding_reads"]["max"]),
        "reads in flight mean": s["outstanding_reads"]["time_mean"],
        "completions per read": s["completions_per_read"]["mean"],
        "TLPs per frame": float("nan") if s["tlps_per_packet"] is None else s["tlps_per_packet"],
    }
    for k, v in sorted(s["type_fractions"].items()):
        out[f"fraction {k}"] = v
    return out


def format_compare(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """The realism table of two traces side by side, with B/A ratios."""
    ra, rb = realism(a), realism(b)
    keys = list(ra) + [k for k in rb if k not in ra]
    w = max(len(k) for k in keys) + 2
    lines = [f"{'':<{w}}{names[0][:24]:>26}{names[1][:24]:>26}{'B/A':>10}"]
    for k in keys:
        x, y = ra.get(k, 0.0), rb.get(k, 0.0)
        ratio = (y / x) if x and np.isfinite(x) and np.isfinite(y) else float("nan")
        lines.append(f"{k:<{w}}{_fmt(x):>26}{_fmt(y):>26}{_fmt(ratio):>10}")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "n/a"
    if abs(v) >= 1000 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.3g}"


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['tlps']} TLPs over {s['duration_us']:.1f} us of simulated time"]
    for d, c in s["by_type"].items():
        if c:
            lines.append(f"  {d:>4}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines.append("  by class: " + ", ".join(f"{k} {v}" for k, v in s["by_class"].items()))
    u = s["link_utilization"]
    pb = s["payload_bytes"]
    lines.append(f"  link bandwidth used: down {u['down'] * 100:.1f}% ({pb['down']} payload B), "
                 f"up {u['up'] * 100:.1f}% ({pb['up']} payload B)")
    rl = s["read_latency_ns"]
    if rl["count"]:
        lines.append(f"  DMA read latency: p50 {rl['p50']:.0f} ns, p99 {rl['p99']:.0f} ns over {rl['count']} reads")
    else:
        lines.append("  DMA read latency: n/a (no device reads were answered)")
    tpp = s["tlps_per_packet"]
    tpp_s = f"{tpp:.2f}" if tpp is not None else "n/a (no completion records)"
    db = s["doorbell_to_dma_ns"]["p50"]
    db_s = f"{db:.0f} ns" if np.isfinite(db) else "n/a (no doorbells)"
    lines.append(f"  interrupts: {s['interrupts']}; TLPs per packet: {tpp_s}; doorbell->first DMA p50 {db_s}")
    o = s["outstanding_reads"]
    ia = s["upstream_interarrival_ns"]
    lines.append(f"  device reads in flight: max {o['max']}, time-weighted mean {o['time_mean']:.2f}; "
                 f"upstream inter-arrival p50 {ia['p50']:.0f} ns, p99 {ia['p99']:.0f} ns")
    for c, h in s["address_alignment"].items():
        lines.append(f"  {c} address alignment: " + ", ".join(f"{k} B: {v}" for k, v in h.items()))
    for note in s.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def plot(s_cols: TraceColumns, outdir: str | Path) -> list[Path]:
    """PNG plots: TLPs over time by class, read latency CDF, request size histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tc = s_cols
    t_us = (tc["t_ps"] - tc["t_ps"].min()) / 1e6

    def figure(name: str, title: str, xlabel: str, ylabel: str, draw, size=(6, 4)) -> Path:
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        f = out / name
        fig.savefig(f, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return f

    def by_class(ax):
        for c in SemClass:
            m = tc["cls"] == c
            if m.any():
                ax.hist(t_us[m], bins=100, histtype="step", label=c.name.lower())
        ax.legend(fontsize=7)

    lat, _ = read_latencies(tc)
    dt, depth = outstanding_depth(tc)
    m = tc["payload_len"] > 0
    files = [
        figure("tlps_over_time.png", "TLPs over time by class", "time (us)", "TLPs per bin", by_class, (8, 4)),
        figure("read_latency_cdf.png", "DMA read latency", "read latency (ns)", "CDF",
               lambda ax: ax.plot(np.sort(lat), np.linspace(0, 1, len(lat))) if len(lat) else None),
        figure("payload_sizes.png", "payload size histogram", "payload bytes", "TLPs",
               lambda ax: ax.hist(tc["payload_len"][m], bins=64)),
        figure("outstanding_reads.png", "device reads in flight", "time (us)", "outstanding reads",
               lambda ax: ax.step((dt - tc["t_ps"].min()) / 1e6, depth, where="post") if len(depth) else None, (8, 3)),
    ]
    return files
