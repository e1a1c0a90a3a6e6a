"""Summarises perf/cluster-bench.sh's report (cluster.json) and the nodes' /metrics as Markdown: the cluster
against one node with the embedded store under the same load."""

import pathlib
import re
import sys

from core_summary import by_target, cpu_per_delivery_us, fmt, load


def samples(text, name):
    """(labels, value) of every sample of `name` in Prometheus text."""
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out.append((m.group(1) or "", float(m.group(2))))
    return out


def room_of(labels):
    m = re.search(r'room="([^"]*)"', labels)
    return m.group(1) if m else labels


def histogram_quantile(text, name, q):
    """The upper bound of the bucket holding quantile q (as promql's histogram_quantile, without interpolation)."""
    buckets = []
    for labels, value in samples(text, f"{name}_bucket"):
        le = re.search(r'le="([^"]+)"', labels).group(1)
        buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return bound
    return None


def main():
    folder = pathlib.Path(sys.argv[1])
    report = load(folder, "cluster")
    targets = by_target(report)
    s = report["scenario"]
    print(
        f"Load: {s['rooms']} rooms, {s['senders_per_room']} senders and {s['viewers_per_room']} WebSocket viewers "
        f"per room, {s['rate_msgs_per_s']:g} messages/s offered for {s['duration_ms'] / 1000:g} s. `cluster`: "
        "three nodes and three NATS servers (R3), senders on node 1, viewers spread over the three nodes; "
        "`single`: one node, embedded store. CPU is every process of the target (the cluster's six together)."
    )
    print()
    print(
        "| target | deliveries/s | lost | dup | publish→delivery p50 ms | p99 ms | p99.9 ms | ack p50 ms | "
        "ack p99 ms | server CPU µs/delivery | load-gen CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, t in targets.items():
        lat, ack = t["latency"], t["ack_latency"]
        print(
            f"| {name} | {t['deliveries_per_s']:,.0f} | {t['lost']} | {t['duplicates']} | "
            f"{lat['p50_us'] / 1000:.1f} | {lat['p99_us'] / 1000:.1f} | {lat['p999_us'] / 1000:.1f} | "
            f"{ack['p50_us'] / 1000:.1f} | {ack['p99_us'] / 1000:.1f} | {fmt(cpu_per_delivery_us(t))} | "
            f"{t['loadgen_cpu_s']:.1f} |"
        )
    if "cluster" in targets and "single" in targets:
        c, o = targets["cluster"], targets["single"]
        print()
        print("| cluster ÷ single | deliveries/s | publish→delivery p50 | p99 | ack p99 | CPU per delivery |")
        print("|---|---|---|---|---|---|")

        def ratio(a, b):
            return a / b if a and b else None

        print(
            f"| | {fmt(ratio(c['deliveries_per_s'], o['deliveries_per_s']), '×')} | "
            f"{fmt(ratio(c['latency']['p50_us'], o['latency']['p50_us']), '×')} | "
            f"{fmt(ratio(c['latency']['p99_us'], o['latency']['p99_us']), '×')} | "
            f"{fmt(ratio(c['ack_latency']['p99_us'], o['ack_latency']['p99_us']), '×')} | "
            f"{fmt(ratio(cpu_per_delivery_us(c), cpu_per_delivery_us(o)), '×')} |"
        )
    nodes = sorted(folder.glob("node*.metrics"))
    if nodes:
        print()
        print(
            "The nodes' own `/metrics` at the end (bucket upper bounds): publish-to-PubAck latency of the messages "
            "each published, and each room's consumer lag (committed messages not yet fanned out)."
        )
        print()
        print("| node | publishes | PubAck p50 ≤ ms | p99 ≤ ms | republished | consumer lag at the end |")
        print("|---|---|---|---|---|---|")
        for path in nodes:
            text = path.read_text()
            count = samples(text, "twitchy_cluster_publish_ack_seconds_count")
            p50 = histogram_quantile(text, "twitchy_cluster_publish_ack_seconds", 0.5)
            p99 = histogram_quantile(text, "twitchy_cluster_publish_ack_seconds", 0.99)
            republished = samples(text, "twitchy_cluster_republished_total")
            lag = samples(text, "twitchy_cluster_consumer_lag_messages")
            lags = ", ".join(f"{room_of(labels)} {value:g}" for labels, value in lag)
            print(
                f"| {path.stem} | {count[0][1]:g} | {fmt(p50 * 1000 if p50 else None, digits=1)} | "
                f"{fmt(p99 * 1000 if p99 else None, digits=1)} | {republished[0][1]:g} | {lags} |"
                if count and republished
                else f"| {path.stem} | n/a | n/a | n/a | n/a | {lags} |"
            )


if __name__ == "__main__":
    main()
