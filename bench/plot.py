#!/usr/bin/env python3
"""Chart of the directory under a growing online population: probe lookup RTT (p50, p99) and
directory CPU against the number of online, heartbeating peers. Reads presence.csv written by
`loadgen`, writes presence.png beside it.

usage: plot.py OUT_DIR
"""
import csv
import sys
from pathlib import Path


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench")
    rows = list(csv.DictReader(open(out / "presence.csv")))
    if not rows:
        print("plot.py: presence.csv has no rows; no chart", file=sys.stderr)
        return 0
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is missing (pip install matplotlib); no chart", file=sys.stderr)
        return 0
    peers = [int(r["peers"]) for r in rows]
    p50 = [float(r["probe_p50_us"]) for r in rows]
    p99 = [float(r["probe_p99_us"]) for r in rows]
    cpu = [float(r["cpu_pct_median"]) for r in rows]
    lo = [float(r["cpu_pct_median"]) - float(r["cpu_pct_min"]) for r in rows]
    hi = [float(r["cpu_pct_max"]) - float(r["cpu_pct_median"]) for r in rows]
    rss = [float(r["rss_mib"]) for r in rows]
    hb = rows[0]["heartbeat_s"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(peers, p50, "o-", label="p50")
    ax1.plot(peers, p99, "s--", label="p99")
    ax1.set_xlabel("online peers (heartbeating)")
    ax1.set_ylabel("directory lookup round trip (µs)")
    ax1.set_title("Directory request RTT vs online peers")
    ax1.set_xscale("log")
    ax1.set_xticks(peers, [f"{n // 1000}k" for n in peers])
    ax1.grid(alpha=0.3)
    ax1.legend()

    ax2.errorbar(peers, cpu, yerr=[lo, hi], fmt="o-", capsize=4, label="CPU, % of one core")
    ax2.axhline(40, color="red", linestyle=":", label="CPU target at 100k: ≤ 40 %")
    ax2.set_xlabel("online peers (heartbeating)")
    ax2.set_ylabel("directory CPU (% of one core)")
    ax2.set_title(f"Directory CPU and RSS (heartbeat {hb} s)")
    ax2.set_xscale("log")
    ax2.set_xticks(peers, [f"{n // 1000}k" for n in peers])
    ax2.grid(alpha=0.3)
    ax3 = ax2.twinx()
    ax3.plot(peers, rss, "^-.", color="gray", label="RSS (MiB)")
    ax3.axhline(2048, color="gray", linestyle=":", label="RSS target at 100k: ≤ 2 GiB")
    ax3.set_ylabel("RSS (MiB)")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="upper left")

    fig.tight_layout()
    fig.savefig(out / "presence.png", dpi=110)
    print(f"wrote {out / 'presence.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
