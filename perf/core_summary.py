"""Summarises perf/core-bench.sh's JSON reports as a Markdown table (Twitchy against the naive baseline)."""

import json
import pathlib
import sys


def load(folder, name):
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def by_target(report):
    return {t["target"]: t for t in report["targets"]}


def cpu_per_delivery_us(t):
    cpu = t["server"].get("cpu_s")
    return cpu / t["deliveries"] * 1e6 if cpu and t["deliveries"] else None


def kernel_per_delivery_us(t):
    cpu = t["server"].get("cpu_system_s")
    return cpu / t["deliveries"] * 1e6 if cpu is not None and t["deliveries"] else None


def fmt(value, unit="", digits=2):
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def main():
    folder = pathlib.Path(sys.argv[1])
    print(
        "| scenario | server | deliveries/s | lost | p50 ms | p99 ms | server CPU µs/delivery | of which kernel | "
        "load-gen CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    names = ["pinned", "shared", "neighbour"] + sorted(
        (p.stem for p in folder.glob("saturation-*.json")), key=lambda n: int(n.split("-")[1])
    )
    ratios = []
    best = {}
    for name in names:
        report = load(folder, name)
        if report is None:
            continue
        targets = by_target(report)
        for server, t in targets.items():
            p99_ms = t["latency"]["p99_us"] / 1000
            print(
                f"| {name} | {server} | {t['deliveries_per_s']:,.0f} | {t['lost']} | "
                f"{t['latency']['p50_us'] / 1000:.1f} | {p99_ms:.1f} | {fmt(cpu_per_delivery_us(t))} | "
                f"{fmt(kernel_per_delivery_us(t))} | "
                f"{t['loadgen_cpu_s']:.1f} |"
            )
            if name.startswith("saturation") and p99_ms <= 100 and t["lost"] == 0:
                best[server] = max(best.get(server, 0), t["deliveries_per_s"])
        for ours in (t for t in targets if t != "naive"):
            if "naive" in targets:
                tw, nv = targets[ours], targets["naive"]
                a, b = cpu_per_delivery_us(tw), cpu_per_delivery_us(nv)
                cpu = a / b if a and b else None
                p99 = tw["latency"]["p99_us"] / nv["latency"]["p99_us"] if nv["latency"]["p99_us"] else None
                ratios.append((f"{name} ({ours})", cpu, p99))
    print()
    print("| scenario (server) | CPU per delivery ÷ naive | p99 ÷ naive |")
    print("|---|---|---|")
    for name, cpu, p99 in ratios:
        print(f"| {name} | {fmt(cpu, '×')} | {fmt(p99, '×')} |")
    if best:
        print()
        print("Highest deliveries/s with p99 ≤ 100 ms and nothing lost (saturation, one CPU each):")
        for server, value in sorted(best.items()):
            print(f"- {server}: {value:,.0f}")
        if best.get("naive"):
            for ours in sorted(s for s in best if s != "naive"):
                if ours in best:
                    print(f"- {ours} ÷ naive: {best[ours] / best['naive']:.2f}×")
    memory = load(folder, "memory")
    if memory:
        print()
        print("Memory per idle WebSocket connection:")
        for t in memory["targets"]:
            print(f"- {t['target']}: {t['bytes_per_connection']:,.0f} bytes ({t['connections_open']} open)")


if __name__ == "__main__":
    main()
