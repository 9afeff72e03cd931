"""Summaries, the markdown tables, the targets, the chart and the raw files."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

NAN = float("nan")

# The targets the benchmark judges against.
T_HPL = 0.98          # container/native GFLOPS, paired by round, both models, both BLAS
T_LAT = 1.05          # container latency within 5 % of native (median)
T_BW = 0.95           # container bandwidth >= 0.95 of native (median)
T_PRO_NODE = 1.3      # per-node prologue <= 1.3 x floor
T_PRO_PROC16 = 4.0    # per-process 16 slots <= 4 x single-container floor
T_EPI = 1.5           # epilogue <= 1.5 x floor
SMALL, LARGE = 4, 4 << 20   # ping-pong sizes the targets are judged at (bytes)


def med(values: Iterable[float]) -> float:
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(xs) if xs else NAN


def best(values: Iterable[float]) -> float:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return max(xs) if xs else NAN


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else NAN


def f(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- summaries
def summarize_startup(data: Dict[str, object]) -> Dict[str, object]:
    floor_rows = data["floor"]  # type: ignore[index]
    hooks = data["hooks"]  # type: ignore[index]
    floor: Dict[int, Dict[str, float]] = {}
    for n in sorted({r["containers"] for r in floor_rows}):
        rows = [r for r in floor_rows if r["containers"] == n]
        floor[n] = {"start": med(r["start"] for r in rows), "rm": med(r["rm"] for r in rows), "samples": len(rows)}
    f1 = floor.get(1, {"start": NAN, "rm": NAN})
    out: List[Dict[str, object]] = []
    for r in hooks:
        r.setdefault("variant", r["model"])
    for variant in dict.fromkeys(r["variant"] for r in hooks):
        for slots in sorted({r["slots"] for r in hooks if r["variant"] == variant}):
            rows = [r for r in hooks if r["variant"] == variant and r["slots"] == slots]
            ok = [r for r in rows if r["ok"]]
            model = rows[0]["model"]
            per_node = 1 if model == "node" else slots
            fn = floor.get(per_node, {"start": NAN, "rm": NAN})
            s: Dict[str, object] = {"variant": variant, "model": model, "slots": slots, "runs": len(rows),
                                    "ok": len(ok), "containers_per_node": per_node}
            for key in ("prologue_ms", "prologue_sister", "epilogue_ms", "epilogue_sister"):
                s[key] = med(r.get(key, NAN) for r in ok)
            s["pro_ms_x_floor1"] = ratio(s["prologue_ms"], f1["start"])
            s["pro_sister_x_floor1"] = ratio(s["prologue_sister"], f1["start"])
            s["pro_ms_x_floorn"] = ratio(s["prologue_ms"], fn["start"])
            s["pro_sister_x_floorn"] = ratio(s["prologue_sister"], fn["start"])
            s["epi_ms_x_floorn"] = ratio(s["epilogue_ms"], fn["rm"])
            s["epi_sister_x_floorn"] = ratio(s["epilogue_sister"], fn["rm"])
            for role, total_key in (("ms", "prologue_ms"), ("sister", "prologue_sister")):
                names: List[str] = []
                for r in ok:
                    for name in r.get(f"steps_{role}", {}):
                        if name not in names:
                            names.append(name)
                steps = {name: med(r.get(f"steps_{role}", {}).get(name, NAN) for r in ok) for name in names}
                # Before the first timed step: interpreter, imports, config, the Docker client.
                steps["outside"] = med(r[total_key] - sum(r.get(f"steps_{role}", {}).values())
                                       for r in ok if r.get(f"steps_{role}") and total_key in r)
                s[f"steps_{role}"] = steps
            s["leftovers"] = sum(int(r.get("leftover_containers", 0)) for r in rows)
            s["errors"] = sorted({str(r.get("error", ""))[-300:] for r in rows if not r["ok"]})
            out.append(s)
    # The node model starts one container per node whatever the slot count: its runs of all
    # slot counts are samples of one quantity, pooled for the targets (steadier on a noisy box).
    pooled: Dict[str, Dict[str, float]] = {}
    for variant in dict.fromkeys(r["variant"] for r in hooks):
        ok = [r for r in hooks if r["variant"] == variant and r["ok"] and r["model"] == "node"]
        if ok:
            pooled[variant] = {key: med(r.get(key, NAN) for r in ok) for key in
                               ("prologue_ms", "prologue_sister", "epilogue_ms", "epilogue_sister")}
            pooled[variant]["samples"] = len(ok)
    return {"floor": floor, "hooks": out, "pooled_node": pooled}


def expand_pairs(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """A ``pairs`` job becomes one row per side and pair: configs ``pairs:native`` and
    ``pairs:node``, whose "round" is (round, pair) so each pair is compared as a round is."""
    out: List[Dict[str, object]] = []
    for r in rows:
        if r["config"] != "pairs":
            out.append(r)
            continue
        for p in r.get("pairs") or []:  # type: ignore[union-attr]
            out.append(dict(r, config=f"pairs:{p['side']}", round=f"{r['round']}.{p['pair']}",
                            pingpong=p["pingpong"], hpl=p.get("hpl") or {}))
    return out


def reference(config: str) -> str:
    return "pairs:native" if config.startswith("pairs:") else "native"


def summarize_mpi(rows: Sequence[Dict[str, object]]) -> Dict[str, object]:
    rows = expand_pairs(rows)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    out: Dict[str, Dict[str, object]] = {}
    for config in configs:
        mine = [r for r in rows if r["config"] == config]
        ok = [r for r in mine if r["ok"]]
        s: Dict[str, object] = {"runs": len(mine), "ok": len(ok), "hpl": {}, "pingpong": {},
                                "placement": sorted({" / ".join(f"rank {x['rank']} in {x['in']} cpus {x['cpus']}"
                                                                for x in sorted(r["ranks"], key=lambda x: x["rank"]))
                                                     for r in mine}),
                                "errors": sorted({str(r.get("error", ""))[-400:] for r in mine if not r["ok"]})}
        blases = list(dict.fromkeys(b for r in mine for b in r["hpl"]))
        for blas in blases:
            g = [r["hpl"][blas]["gflops"] for r in mine if blas in r["hpl"] and r["hpl"][blas]["passed"]]
            n = next((r["hpl"][blas]["N"] for r in mine if blas in r["hpl"]), 0)
            s["hpl"][blas] = {"median": med(g), "best": best(g), "samples": g, "N": n}  # type: ignore[index]
        sizes = sorted({p["bytes"] for r in mine for p in r["pingpong"]})
        for size in sizes:
            pts = [p for r in mine for p in r["pingpong"] if p["bytes"] == size]
            s["pingpong"][size] = {"lat_us": med(p["lat_us"] for p in pts),  # type: ignore[index]
                                   "bw_MBps": med(p["bw_MBps"] for p in pts), "samples": len(pts),
                                   # the fastest batch of each run, median over runs: less
                                   # sensitive to the ranks being descheduled on a loaded box
                                   "lat_best": med(p.get("lat_min_us", p["lat_us"]) for p in pts),
                                   "bw_best": med(p.get("bw_max_MBps", p["bw_MBps"]) for p in pts)}
        out[config] = s
    for config, s in out.items():
        ref = reference(config)
        native = out.get(ref)
        if native:
            for blas, h in s["hpl"].items():  # type: ignore[union-attr]
                nh = native["hpl"].get(blas)  # type: ignore[union-attr]
                h["ratio_median"] = ratio(h["median"], nh["median"]) if nh else NAN
                h["ratio_best"] = ratio(h["best"], nh["best"]) if nh else NAN
                # Paired: this configuration's run against native's run of the same round
                # (adjacent in time), median over rounds: steadier when the load drifts.
                pairs = []
                for r in rows:
                    if r["config"] != config or blas not in r["hpl"]:
                        continue
                    n = [x for x in rows if x["config"] == ref and x["round"] == r["round"] and blas in x["hpl"]]
                    if n and n[0]["hpl"][blas]["gflops"]:
                        pairs.append(r["hpl"][blas]["gflops"] / n[0]["hpl"][blas]["gflops"])
                h["ratio_paired"] = med(pairs)
            for size, p in s["pingpong"].items():  # type: ignore[union-attr]
                np_ = native["pingpong"].get(size)  # type: ignore[union-attr]
                p["lat_ratio"] = ratio(p["lat_us"], np_["lat_us"]) if np_ else NAN
                p["bw_ratio"] = ratio(p["bw_MBps"], np_["bw_MBps"]) if np_ else NAN
                p["lat_best_ratio"] = ratio(p["lat_best"], np_["lat_best"]) if np_ else NAN
                p["bw_best_ratio"] = ratio(p["bw_best"], np_["bw_best"]) if np_ else NAN
                # Paired by round, as HPL: each run against native's run of the same round.
                lat_pairs, bw_pairs = [], []
                for r in rows:
                    if r["config"] != config:
                        continue
                    mine_pt = [x for x in r["pingpong"] if x["bytes"] == size]
                    nat = [x for n in rows if n["config"] == ref and n["round"] == r["round"]
                           for x in n["pingpong"] if x["bytes"] == size]
                    if mine_pt and nat and nat[0]["lat_us"] and nat[0]["bw_MBps"]:
                        lat_pairs.append(mine_pt[0]["lat_us"] / nat[0]["lat_us"])
                        bw_pairs.append(mine_pt[0]["bw_MBps"] / nat[0]["bw_MBps"])
                p["lat_paired"] = med(lat_pairs)
                p["bw_paired"] = med(bw_pairs)
    return out


def targets(startup: Optional[Dict[str, object]], mpi: Optional[Dict[str, object]]) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []

    def add(name: str, value: float, limit: float, better: str, note: str = "") -> None:
        met = None if math.isnan(value) else (value >= limit if better == "higher" else value <= limit)
        rows.append({"target": name, "measured": value, "limit": limit, "better": better, "met": met, "note": note})

    if mpi:
        for blas, name in (("openblas", "OpenBLAS"), ("refblas", "reference BLAS")):
            for config in ("node", "process"):
                h = mpi[config]["hpl"].get(blas) if config in mpi else None  # type: ignore[index]
                if h:
                    add(f"HPL ({name}) {config} model / native, paired by round", h.get("ratio_paired", NAN), T_HPL,
                        "higher", f"medians: {f(h.get('ratio_median', NAN))}, best runs: {f(h.get('ratio_best', NAN))}")
        for config in ("node", "process"):
            if config in mpi:
                pp = mpi[config]["pingpong"]  # type: ignore[index]
                small, large = pp.get(SMALL, {}), pp.get(LARGE, {})
                add(f"ping-pong {SMALL} B latency, {config} / native", small.get("lat_ratio", NAN), T_LAT, "lower",
                    f"paired by round: {f(small.get('lat_paired', NAN))}, "
                    f"fastest batches: {f(small.get('lat_best_ratio', NAN))}")
                add(f"ping-pong {LARGE >> 20} MiB bandwidth, {config} / native", large.get("bw_ratio", NAN), T_BW,
                    "higher", f"paired by round: {f(large.get('bw_paired', NAN))}, "
                    f"fastest batches: {f(large.get('bw_best_ratio', NAN))}")
        if "pairs:node" in mpi:
            for blas, name in (("openblas", "OpenBLAS"), ("refblas", "reference BLAS")):
                h = mpi["pairs:node"]["hpl"].get(blas)  # type: ignore[index]
                if h:
                    add(f"HPL ({name}) node / native, back-to-back pairs in one job", h.get("ratio_paired", NAN),
                        T_HPL, "higher", f"medians: {f(h.get('ratio_median', NAN))}")
            pp = mpi["pairs:node"]["pingpong"]  # type: ignore[index]
            small, large = pp.get(SMALL, {}), pp.get(LARGE, {})
            add(f"ping-pong {SMALL} B latency, node / native, back-to-back pairs in one job (median of pair ratios)",
                small.get("lat_paired", NAN), T_LAT, "lower", f"medians: {f(small.get('lat_ratio', NAN))}")
            add(f"ping-pong {LARGE >> 20} MiB bandwidth, node / native, back-to-back pairs in one job",
                large.get("bw_paired", NAN), T_BW, "higher", f"medians: {f(large.get('bw_ratio', NAN))}")
    if startup:
        fl = startup["floor"]  # type: ignore[index]
        f1 = fl.get(1, {"start": NAN, "rm": NAN})
        node = startup.get("pooled_node", {}).get("node")  # type: ignore[union-attr]
        if node:
            add("per-node prologue (MS) / floor, all slot counts pooled", ratio(node["prologue_ms"], f1["start"]),
                T_PRO_NODE, "lower")
            add("per-node prologue.parallel (sister) / floor, pooled", ratio(node["prologue_sister"], f1["start"]),
                T_PRO_NODE, "lower")
        p16 = [h for h in startup["hooks"] if h["variant"] == "process" and h["slots"] == 16]  # type: ignore[index]
        if p16:
            add("per-process 16 slots prologue (MS) / 1-container floor", p16[0]["pro_ms_x_floor1"], T_PRO_PROC16,
                "lower")
            add("per-process 16 slots prologue.parallel / 1-container floor", p16[0]["pro_sister_x_floor1"],
                T_PRO_PROC16, "lower")
        if node:
            add("per-node epilogue (MS) / docker rm -f, pooled", ratio(node["epilogue_ms"], f1["rm"]), T_EPI, "lower")
            add("per-node epilogue.parallel / docker rm -f, pooled", ratio(node["epilogue_sister"], f1["rm"]),
                T_EPI, "lower")
        if p16:
            add("per-process 16 slots epilogue (MS) / docker rm -f of 16", p16[0]["epi_ms_x_floorn"], T_EPI, "lower")
            add("per-process 16 slots epilogue.parallel / docker rm -f of 16", p16[0]["epi_sister_x_floorn"],
                T_EPI, "lower")
    return rows


# ----------------------------------------------------------------------------- markdown
def markdown(meta: Dict[str, object], startup: Optional[Dict[str, object]], mpi: Optional[Dict[str, object]],
             goals: List[Dict[str, object]]) -> str:
    lines: List[str] = []
    load = [x for x in (meta.get("loadavg_start"), meta.get("loadavg_end")) if x]
    lines.append(f"Run {meta.get('run_id')} ({meta.get('mode')}), {meta.get('host_cpus')} CPUs, "
                 f"torque-docker {meta.get('commit')}, {meta.get('wall_minutes', 0):.1f} min"
                 + (f", load average at start/end {' / '.join(f'{x[0]:.1f}' for x in load)}" if load else "") + ".")
    lines.append("")
    if mpi:
        lines.append("**MPI, 2 ranks** (median over runs. HPL: best run in brackets; paired = median over rounds of "
                     "the run / native's run in the same round. Ping-pong: each run reports its median batch and, "
                     "in brackets, its fastest batch; ratio = / native's)")
        lines.append("")
        blases = list(dict.fromkeys(b for s in mpi.values() for b in s["hpl"]))  # type: ignore[union-attr]
        head = ["configuration", "runs"]
        for blas in blases:
            n = next(s["hpl"][blas]["N"] for s in mpi.values() if blas in s["hpl"])  # type: ignore[index]
            head += [f"HPL {blas} N={n} GFLOPS", "ratio", "paired"]
        head += [f"latency {SMALL} B (us)", "ratio", "latency 1 KiB (us)", "ratio",
                 f"bandwidth {LARGE >> 20} MiB (MB/s)", "ratio"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for config, s in mpi.items():
            cells = [config, f"{s['ok']}/{s['runs']}"]
            for blas in blases:
                h = s["hpl"].get(blas)  # type: ignore[union-attr]
                cells += ([f"{f(h['median'])} ({f(h['best'])})", f(h.get("ratio_median", NAN)),
                           f(h.get("ratio_paired", NAN))] if h else ["n/a", "n/a", "n/a"])
            pp = s["pingpong"]  # type: ignore[index]
            for size, key, rkey, bkey, brkey, d in (
                    (SMALL, "lat_us", "lat_ratio", "lat_best", "lat_best_ratio", 2),
                    (1024, "lat_us", "lat_ratio", "lat_best", "lat_best_ratio", 2),
                    (LARGE, "bw_MBps", "bw_ratio", "bw_best", "bw_best_ratio", 0)):
                p = pp.get(size)
                cells += ([f"{f(p[key], d)} ({f(p[bkey], d)})", f"{f(p.get(rkey, NAN))} ({f(p.get(brkey, NAN))})"]
                          if p else ["n/a", "n/a"])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if startup:
        fl = startup["floor"]  # type: ignore[index]
        lines.append("**Start-up and teardown per node** (median seconds; x = ratio to the floor: `docker run -d` "
                     "until sshd answers / `docker rm -f`, measured in the same run)")
        lines.append("")
        lines.append("| floor | " + " | ".join(f"{n} ctr" for n in fl) + " |")
        lines.append("|---|" + "---|" * len(fl))
        lines.append("| start (s) | " + " | ".join(f(v["start"]) for v in fl.values()) + " |")
        lines.append("| rm -f (s) | " + " | ".join(f(v["rm"]) for v in fl.values()) + " |")
        lines.append("")
        head = ["hooks", "slots", "ok", "prologue MS", "x floor(1)", "prologue.parallel", "x floor(1)",
                "x floor(same n)", "epilogue MS", "x rm floor", "epilogue.parallel", "x rm floor"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for h in startup["hooks"]:  # type: ignore[union-attr]
            lines.append("| " + " | ".join([
                str(h["variant"]), str(h["slots"]), f"{h['ok']}/{h['runs']}",
                f(h["prologue_ms"]), f(h["pro_ms_x_floor1"], 1), f(h["prologue_sister"]),
                f(h["pro_sister_x_floor1"], 1), f(h["pro_sister_x_floorn"], 1),
                f(h["epilogue_ms"]), f(h["epi_ms_x_floorn"], 1), f(h["epilogue_sister"]),
                f(h["epi_sister_x_floorn"], 1)]) + " |")
        f1 = fl.get(1, {"start": NAN, "rm": NAN})
        for variant, p in startup.get("pooled_node", {}).items():  # type: ignore[union-attr]
            lines.append("| " + " | ".join([
                f"{variant}, pooled", "all", str(p["samples"]), f(p["prologue_ms"]), f(ratio(p["prologue_ms"], f1["start"]), 1),
                f(p["prologue_sister"]), f(ratio(p["prologue_sister"], f1["start"]), 1),
                f(ratio(p["prologue_sister"], f1["start"]), 1), f(p["epilogue_ms"]), f(ratio(p["epilogue_ms"], f1["rm"]), 1),
                f(p["epilogue_sister"]), f(ratio(p["epilogue_sister"], f1["rm"]), 1)]) + " |")
        lines.append("")
        lines.append("**Where the prologue's time goes** (median seconds per step, from the prologue's own "
                     "timing line; `outside` = interpreter start, imports and config before the first step)")
        lines.append("")
        names: List[str] = []
        for h in startup["hooks"]:  # type: ignore[union-attr]
            for role in ("ms", "sister"):
                for name in h[f"steps_{role}"]:
                    if name not in names:
                        names.append(name)
        names = ["outside"] + [n for n in names if n != "outside"]
        lines.append("| hook | slots | " + " | ".join(names) + " | total |")
        lines.append("|---|---|" + "---|" * (len(names) + 1))
        for h in startup["hooks"]:  # type: ignore[union-attr]
            for role, total in (("ms", "prologue_ms"), ("sister", "prologue_sister")):
                st = h[f"steps_{role}"]
                if not st:
                    continue
                label = f"{h['variant']} {'prologue' if role == 'ms' else 'prologue.parallel'}"
                lines.append(f"| {label} | {h['slots']} | " + " | ".join(f(st.get(n, NAN)) for n in names)
                             + f" | {f(h[total])} |")
        lines.append("")
    if goals:
        lines.append("**Targets**")
        lines.append("")
        lines.append("| target | measured | limit | met | also |")
        lines.append("|---|---|---|---|---|")
        for g in goals:
            sign = ">=" if g["better"] == "higher" else "<="
            met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
            lines.append(f"| {g['target']} | {f(g['measured'])} | {sign} {g['limit']} | {met} | {g['note']} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- chart
def chart(path: Path, startup: Optional[Dict[str, object]], mpi: Optional[Dict[str, object]], title: str) -> None:
    """Like the paper's Figure 4 (HPL GFLOPS, native vs containers), one panel per BLAS, plus
    the ping-pong and the start-up/teardown panels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"native": "#4c72b0", "node": "#55a868", "process": "#c44e52", "node-2x1": "#8172b2",
              "native-nocma": "#937860"}
    blases = list(dict.fromkeys(b for s in (mpi or {}).values() for b in s["hpl"]))  # type: ignore[union-attr]
    panels = len(blases) + (1 if mpi else 0) + (1 if startup else 0)
    if not panels:
        return
    cols = 2 if panels > 1 else 1
    rows = (panels + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.set_visible(False)
    i = 0
    for blas in blases:
        ax = axes[i]
        i += 1
        configs = [c for c in mpi if blas in mpi[c]["hpl"]]  # type: ignore[union-attr,index]
        meds = [mpi[c]["hpl"][blas]["median"] for c in configs]  # type: ignore[index]
        samples = [mpi[c]["hpl"][blas]["samples"] for c in configs]  # type: ignore[index]
        bars = ax.bar(range(len(configs)), meds, 0.6, color=[colors.get(c, "#777777") for c in configs],
                      yerr=[[m - min(x) if x else 0 for m, x in zip(meds, samples)],
                            [max(x) - m if x else 0 for m, x in zip(meds, samples)]], capsize=4)
        for k, (bar, config) in enumerate(zip(bars, configs)):
            h = mpi[config]["hpl"][blas]  # type: ignore[index]
            xs = [k + (j - (len(h["samples"]) - 1) / 2) * 0.05 for j in range(len(h["samples"]))]
            ax.plot(xs, h["samples"], "k.", ms=3)
            r = h.get("ratio_median", NAN)
            ax.annotate(f"{h['median']:.1f}" + ("" if math.isnan(r) else f"\n({r:.2f}x)"),
                        (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 4), textcoords="offset points", color="white", fontweight="bold")
        n = mpi[configs[0]]["hpl"][blas]["N"] if configs else 0  # type: ignore[index]
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(configs)
        ax.set_ylabel("GFLOPS (bar: median, whiskers: min-max, dots: runs)")
        ax.set_title(f"HPL N={n}, 2 ranks, {'OpenBLAS' if blas == 'openblas' else 'reference BLAS'}: "
                     "native vs containers", fontsize=10)
    if mpi:
        ax = axes[i]
        i += 1
        for config in mpi:
            pp = mpi[config]["pingpong"]  # type: ignore[index]
            sizes = sorted(pp)
            ax.plot(sizes, [pp[s]["lat_us"] for s in sizes], marker="o", ms=3, label=config,
                    color=colors.get(config))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("half round-trip (us), median of runs")
        ax.set_title("MPI ping-pong, 2 ranks on one node", fontsize=10)
        ax.legend(fontsize=8)
    if startup:
        ax = axes[i]
        fl = startup["floor"]  # type: ignore[index]
        ns = sorted(fl)
        ax.plot(ns, [fl[n]["start"] for n in ns], "k--", marker="s", ms=3, label="floor: docker run -d, sshd up")
        ax.plot(ns, [fl[n]["rm"] for n in ns], "k:", marker="x", ms=3, label="floor: docker rm -f")
        for variant in dict.fromkeys(h["variant"] for h in startup["hooks"]):  # type: ignore[union-attr]
            hs = [h for h in startup["hooks"] if h["variant"] == variant]  # type: ignore[union-attr]
            color = colors.get(str(hs[0]["model"]))
            what_if = variant != hs[0]["model"]
            xs = [h["slots"] for h in hs]
            ax.plot(xs, [h["prologue_ms"] for h in hs], marker="o", ms=3, color=color,
                    linestyle=":" if what_if else "-", alpha=0.6 if what_if else 1.0,
                    label=f"{variant}: prologue (MS)")
            if not what_if:
                ax.plot(xs, [h["epilogue_ms"] for h in hs], marker="v", ms=3, color=color, linestyle="-.",
                        label=f"{variant}: epilogue (MS)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("slots per node (containers per node: node model 1, process model = slots)")
        ax.set_ylabel("seconds, median")
        ax.set_title("Start-up / teardown per node through the hooks", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- raw files
def write_csv(path: Path, rows: Sequence[Dict[str, object]], fields: Sequence[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})


def write_raw(out: Path, raw: Dict[str, object]) -> None:
    (out / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    st = raw.get("startup")
    if st:
        write_csv(out / "floor.csv", st["floor"], ["rep", "containers", "start", "rm"])  # type: ignore[index]
        write_csv(out / "hooks.csv", st["hooks"], [  # type: ignore[index]
            "rep", "variant", "model", "slots", "jobid", "ok", "prologue_ms", "prologue_sister", "epilogue_ms",
            "epilogue_sister", "steps_ms", "steps_sister", "leftover_containers", "error"])
    rows = raw.get("mpi")
    if rows:
        flat = []
        for r in expand_pairs(rows):  # type: ignore[arg-type]
            base = {"config": r["config"], "round": r["round"], "jobid": r["jobid"], "ok": r["ok"]}
            for blas, h in r["hpl"].items():
                flat.append({**base, "kind": f"hpl-{blas}", "size": h["N"], "value": h["gflops"], "unit": "GFLOPS"})
            for p in r["pingpong"]:
                flat.append({**base, "kind": "pingpong-latency", "size": p["bytes"], "value": p["lat_us"], "unit": "us"})
                flat.append({**base, "kind": "pingpong-bandwidth", "size": p["bytes"], "value": p["bw_MBps"],
                             "unit": "MB/s"})
        write_csv(out / "mpi.csv", flat, ["config", "round", "jobid", "ok", "kind", "size", "value", "unit"])
