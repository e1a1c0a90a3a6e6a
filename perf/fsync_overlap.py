"""Group commit on this machine's disk, without the engine: how fast can acknowledged appends be?

Messages of 150 bytes arrive at a steady rate (arithmetically, not as objects). Each syncer thread in turn takes
what arrived since the last cut, writes it at the end of a pre-allocated, zero-filled file (so an fdatasync flushes
data only, as the commit log's segments do) and calls fdatasync; every message of that cut is acknowledged then.
With one syncer that is the commit log's group commit; with two or more, cuts are written while earlier ones are
still syncing (overlapping fsyncs). Latency is weighted per message, from its arrival to its cut's fdatasync.

Usage: python3 perf/fsync_overlap.py [--rate 208335] [--seconds 8] [--threads 1 2 3]
The file lives in a temporary folder under target/ and is removed afterwards.
"""

import argparse
import os
import pathlib
import tempfile
import threading
import time

MESSAGE_BYTES = 150
FILE_BYTES = 512 << 20


def run(rate, seconds, threads, folder):
    path = os.path.join(folder, f"overlap-{threads}.log")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    zeros = b"\0" * (8 << 20)
    for offset in range(0, FILE_BYTES, len(zeros)):
        os.pwrite(fd, zeros, offset)
    os.fsync(fd)
    lock = threading.Lock()
    state = {"cut": None, "offset": 0}
    samples = []  # (latency ms, messages)
    start = time.monotonic() + 0.2
    end = start + seconds

    def syncer():
        while True:
            with lock:
                now = time.monotonic()
                if now >= end:
                    return
                since = state["cut"] if state["cut"] is not None else start
                if now <= since:
                    cut = None
                else:
                    cut = now
                    messages = int(rate * (cut - since))
                    size = max(messages * MESSAGE_BYTES, 1)
                    offset = state["offset"] if state["offset"] + size <= FILE_BYTES else 0
                    os.pwrite(fd, b"x" * size, offset)
                    state["offset"] = offset + size
                    state["cut"] = cut
            if cut is None:
                time.sleep(0.0001)
                continue
            os.fdatasync(fd)
            done = time.monotonic()
            # Arrivals are uniform over [since, cut]: twenty points stand for them.
            for i in range(20):
                arrived = since + (cut - since) * (i + 0.5) / 20
                samples.append(((done - arrived) * 1000, messages / 20))

    while time.monotonic() < start:
        time.sleep(0.001)
    workers = [threading.Thread(target=syncer) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    os.close(fd)
    os.unlink(path)
    samples.sort()
    total = sum(weight for _, weight in samples)

    def quantile(q):
        seen = 0
        for value, weight in samples:
            seen += weight
            if seen >= q * total:
                return value
        return samples[-1][0]

    print(
        f"syncers {threads}: {rate:,.0f} msg/s, ack p50 {quantile(0.5):.2f} ms, p99 {quantile(0.99):.2f} ms, "
        f"p99.9 {quantile(0.999):.2f} ms, max {samples[-1][0]:.2f} ms, {len(samples) // 20} fdatasyncs"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=208335)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    target = pathlib.Path(__file__).resolve().parent.parent / "target"
    target.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as folder:
        for threads in args.threads:
            run(args.rate, args.seconds, threads, folder)


if __name__ == "__main__":
    main()
