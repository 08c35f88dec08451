#!/usr/bin/env python3
"""Tables (Markdown) and a chart (PNG) from scripts/bench results JSON.

usage: report.py RESULTS.json OUT.md CHART.png
"""
import json
import sys

SERVERS = ["halite-wsgi", "halite-cp", "salt-cherrypy", "salt-tornado", "raw"]


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def halite_row(rows):
    """halite's row for a cell: rest_cherrypy /run when measured, else rest_wsgi."""
    by = {r["server"]: r for r in rows}
    return by.get("halite-wsgi") or by.get("halite-cp"), by


def main():
    res_path, md_path, png_path = sys.argv[1:4]
    data = json.load(open(res_path))
    meta, results = data["meta"], data["results"]
    out = []
    m = meta["machine"]
    out.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
               f"Salt {m['salt']}, open files limit {m['nofile']}; run {m['date']}, "
               f"{meta['duration_s']:.0f} s per measurement, total {meta.get('total_s', 0) / 60:.1f} min.\n")
    cells = []
    for r in results:
        key = (r["phase"], r["workload"], r["concurrency"])
        if key not in cells:
            cells.append(key)

    out.append("### Real lab (3 minions)\n")
    out.append("| workload | c | server | req/s | p50 ms | p99 ms | failed | incomplete | API CPU µs/req | API peak RSS MiB | master CPU µs/req |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in cells:
        if key[0] != "lab":
            continue
        rows = sorted([r for r in results if (r["phase"], r["workload"], r["concurrency"]) == key],
                      key=lambda r: SERVERS.index(r["server"]))
        for r in rows:
            inc = r["incomplete"]
            if inc is None:
                inc = f"({r.get('precheck', '–').split(',')[0]} pre)"
            out.append(f"| {r['workload']} {r['title']} | {r['concurrency']} | {r['server']} | {fmt(r['rps'])} | "
                       f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['failed']} | {inc} | "
                       f"{fmt(r['api_cpu_us_per_req'])} | {fmt(r['peak_rss_mib'])} | {fmt(r['master_cpu_us_per_req'])} |")
    out.append("")

    out.append("### Ratios (halite = rest_wsgi POST /; W5 uses halite's rest_cherrypy /login)\n")
    out.append("| workload | c | halite CPU/req ÷ rest_cherrypy | halite CPU/req ÷ rest_tornado | halite req/s ÷ raw | halite req/s ÷ rest_cherrypy | incomplete halite / raw / cherrypy / tornado |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    ratios = {}
    for key in cells:
        if key[0] != "lab":
            continue
        rows = [r for r in results if (r["phase"], r["workload"], r["concurrency"]) == key]
        by = {r["server"]: r for r in rows}
        h = by.get("halite-cp") if key[1] == "W5" else by.get("halite-wsgi")
        if not h:
            out.append(f"| {key[1]} | {key[2]} | halite not measured | | | | |")
            continue
        cp, tor, raw = by.get("salt-cherrypy"), by.get("salt-tornado"), by.get("raw")

        def ratio(a, b, k):
            if not a or not b or not a.get(k) or not b.get(k):
                return None
            return a[k] / b[k]
        rc, rt = ratio(h, cp, "api_cpu_us_per_req"), ratio(h, tor, "api_cpu_us_per_req")
        rr, rcp = ratio(h, raw, "ok_rps"), ratio(h, cp, "ok_rps")
        ratios[key] = {"cpu_vs_cp": rc, "rps_vs_raw": rr, "inc_h": h.get("incomplete"),
                       "inc_raw": raw.get("incomplete") if raw else None}
        inc = " / ".join(str(x.get("incomplete") if x else "–") for x in (h, raw, cp, tor))
        out.append(f"| {key[1]} | {key[2]} | {fmt(rc, 4) if rc is not None else '–'} (1/{fmt(1 / rc, 0) if rc else '–'}) | "
                   f"{fmt(rt, 4) if rt is not None else '–'} | {fmt(rr, 2) if rr is not None else '–'} | "
                   f"{fmt(rcp, 1) if rcp is not None else '–'} | {inc} |")
    out.append("")

    null = [r for r in results if r["phase"] == "null"]
    if null:
        out.append("### halite against null-master (no Salt work; halite is the only real cost)\n")
        out.append(f"Idle RSS after start: **{fmt(meta.get('null_idle_rss_mib'), 1)} MiB**; "
                   f"after the local_async runs: {fmt(meta.get('null_idle_rss_after_mib'), 1)} MiB; "
                   f"after the in-flight run: {fmt(meta.get('null_rss_after_inflight_mib'), 1)} MiB.\n")
        out.append("| run | c | server | req/s | p50 ms | p99 ms | failed | incomplete | CPU µs/req | calls per CPU-second | peak RSS MiB | max in flight |")
        out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in null:
            per_core = 1e6 / r["api_cpu_us_per_req"] if r.get("api_cpu_us_per_req") else None
            out.append(f"| {r['workload']} {r['title']} | {r['concurrency']} | {r['server']} | {fmt(r['rps'])} | "
                       f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['failed']} | {r['incomplete']} | "
                       f"{fmt(r['api_cpu_us_per_req'])} | {fmt(per_core)} | {fmt(r['peak_rss_mib'])} | "
                       f"{r.get('max_in_flight') or '–'} |")
        out.append("")
    if meta.get("notes"):
        out.append("Notes: " + "; ".join(meta["notes"]) + "\n")
    open(md_path, "w").write("\n".join(out) + "\n")

    # ---- chart
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib missing, no chart", file=sys.stderr)
        return
    lab_cells = [k for k in cells if k[0] == "lab"]
    labels = [f"{k[1]}\nc={k[2]}" for k in lab_cells]
    present = [s for s in SERVERS if any(r["server"] == s for r in results if r["phase"] == "lab")]
    colors = {"halite-wsgi": "#1b7837", "halite-cp": "#5aae61", "salt-cherrypy": "#c51b7d",
              "salt-tornado": "#e9a3c9", "raw": "#4d4d4d"}
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.1 * len(labels)), 9), sharex=True)
    width = 0.8 / max(1, len(present))
    for i, s in enumerate(present):
        xs, rps, cpu = [], [], []
        for j, k in enumerate(lab_cells):
            r = next((r for r in results if (r["phase"], r["workload"], r["concurrency"]) == k
                      and r["server"] == s), None)
            if r is None:
                continue
            xs.append(j + (i - (len(present) - 1) / 2) * width)
            rps.append(r.get("ok_rps") or 0)
            cpu.append(r.get("api_cpu_us_per_req") or 0)
        axes[0].bar(xs, rps, width, label=s, color=colors.get(s))
        axes[1].bar(xs, cpu, width, label=s, color=colors.get(s))
    axes[0].set_ylabel("successful requests/s")
    axes[0].set_yscale("log")
    axes[0].set_title(f"Throughput and API CPU per call — Salt {m['salt']} lab, {m['nproc']} CPUs")
    axes[0].legend(ncol=len(present), fontsize=8)
    axes[1].set_ylabel("API process CPU µs per request (log)")
    axes[1].set_yscale("log")
    axes[1].set_xticks(range(len(labels)))
    axes[1].set_xticklabels(labels, fontsize=8)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"report: wrote {md_path} and {png_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
