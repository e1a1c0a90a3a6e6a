#!/usr/bin/env python3
"""Light probes of a production edge node, the way a new user and an attacker would try it.

Starts release builds of `twitchy` (by pid, loopback only, fresh data directories), runs each probe and prints one
Markdown table of what was seen. Nothing here asserts: the integration tests do that; this reports figures.

    cargo build --release -p twitchy-engine && python3 perf/edge_probe.py

Probes: promtool on /metrics; TLS (HTTPS, a plain-text client of the TLS port); HTTP bodies that never arrive and
one trickling in; sign-in (50 concurrent registrations against an ordinary login, 40 wrong passwords, unknown vs
known login time); 50 clients that send PINGs and never read (server memory per client, kernel socket memory);
a vLLM endpoint given by a host name whose DNS server never answers (PING round trips); WebSocket protocol errors;
a JOIN of 10,000 channels in 10 lines; a registration that never ends; security headers.
"""

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "twitchy")
ROWS = []


def row(probe, result):
    ROWS.append((probe, result))
    print(f"- {probe}: {result}", file=sys.stderr, flush=True)


class Server:
    def __init__(self, *extra, prefix=()):
        self.dir = tempfile.mkdtemp(prefix="twitchy-probe-")
        args = list(prefix) + [BINARY, "--http", "127.0.0.1:0", "--irc", "127.0.0.1:0", "--data-dir",
                               os.path.join(self.dir, "data"), "--shards", "1", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "RUST_LOG": "error"}, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("twitchy ready"):
            raise RuntimeError(f"server did not start: {line!r}")
        fields = dict(w.split("=", 1) for w in line.split()[2:])
        http = fields["http"].split("://", 1)[1].rstrip("/")
        self.http = (http.split(":")[0], int(http.split(":")[1]))
        irc = fields["irc"]
        self.irc = (irc.split(":")[0], int(irc.split(":")[1]))
        self.pid = self.proc.pid
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def settle(self):
        """Waits until the server's RSS holds still (start-up buffers are given back a few seconds in)."""
        time.sleep(4)
        last = self.rss_kib()
        for _ in range(20):
            time.sleep(1)
            now = self.rss_kib()
            if abs(now - last) < 256:
                return
            last = now

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def http(addr, method, path, body=None, token=None, tls=None, timeout=30):
    sock = socket.create_connection(addr, timeout=timeout)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="localhost")
    data = json.dumps(body) if body is not None else ""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n{data}".encode())
    raw = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    sock.close()
    head, _, body = raw.decode(errors="replace").partition("\r\n\r\n")
    status = int(head.split(" ")[1]) if head.startswith("HTTP/") else 0
    return status, head, body


def metric(addr, name):
    _, _, body = http(addr, "GET", "/metrics")
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total


def probe_promtool(server):
    _, _, body = http(server.http, "GET", "/metrics")
    if not shutil.which("promtool"):
        row("promtool check metrics", "promtool not installed")
        return
    out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    families = sum(1 for line in body.splitlines() if line.startswith("# TYPE"))
    row("`promtool check metrics`", f"exit {out.returncode}, {families} families"
        + (f": {out.stdout.strip()} {out.stderr.strip()}" if out.returncode else ""))


def probe_tls():
    from subprocess import run
    cert_dir = tempfile.mkdtemp(prefix="twitchy-probe-cert-")
    cert, key = os.path.join(cert_dir, "c.pem"), os.path.join(cert_dir, "k.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"], capture_output=True, check=True)
    server = Server("--tls-cert", cert, "--tls-key", key, "--irc-tls", "127.0.0.1:0")
    try:
        ctx = ssl.create_default_context(cafile=cert)
        status, _, body = http(server.http, "GET", "/healthz", tls=ctx)
        version = ctx.wrap_socket(socket.create_connection(server.http), server_hostname="localhost").version()
        row("HTTPS `/healthz` (self-signed, `--tls-cert/--tls-key`)", f"{status} {body.strip()}, {version}")
        status, _, body = http(server.http, "GET", "/healthz")
        row("plain HTTP to the TLS port", f"{status} {body.strip()}")
        # Idle WSS viewers joined to a room: server RSS per connection, measured between 200 and 1,200 open ones
        # (the first ones warm the allocator and the shard's tables up).
        def viewer(i):
            s, _ = ws_connect(server.http, tls=ctx)
            s.sendall(ws_frame(1, f"NICK justinfan{70000 + i}\r\nJOIN #lobby\r\n".encode()))
            return s
        server.settle()
        conns = [viewer(i) for i in range(200)]
        time.sleep(2)
        before = server.rss_kib()
        conns += [viewer(i) for i in range(200, 1200)]
        time.sleep(2)
        after = server.rss_kib()
        row("idle WSS viewers in a room (200 → 1,200 open)", f"{(after - before) * 1024 // 1000:,} B server RSS each")
        for c in conns:
            c.close()
        # Handshakes per second, one client at a time.
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 2:
            ctx.wrap_socket(socket.create_connection(server.http), server_hostname="localhost").close()
            n += 1
        row("TLS handshakes, sequential", f"{n / (time.monotonic() - start):,.0f}/s (client and server on this machine)")
    finally:
        server.stop()
        shutil.rmtree(cert_dir, ignore_errors=True)


def probe_http_limits():
    server = Server("--connections-per-shard-max", "5")
    try:
        socks, statuses = [], []
        start = time.monotonic()
        for _ in range(40):
            s = socket.create_connection(server.http)
            s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            socks.append(s)
        for s in socks:
            s.settimeout(30)
            try:
                data = s.recv(4096).decode(errors="replace")
            except OSError:
                data = ""
            statuses.append(data.split(" ")[1] if data.startswith("HTTP/") else "closed")
        elapsed = time.monotonic() - start
        counts = {k: statuses.count(k) for k in sorted(set(statuses))}
        row("40 POSTs whose bodies never arrive (`--connections-per-shard-max 5`)",
            f"answers {counts}, all ended within {elapsed:.1f} s (body deadline 10 s)")
        # One byte per second.
        s = socket.create_connection(server.http)
        s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        s.setblocking(False)
        start = time.monotonic()
        answer = ""
        while time.monotonic() - start < 30:
            try:
                s.send(b"x")
            except OSError:
                break
            try:
                chunk = s.recv(4096)
                if chunk:
                    answer = chunk.decode(errors="replace").split("\r\n")[0]
                    break
            except BlockingIOError:
                pass
            time.sleep(1)
        row("a body trickling in at 1 byte/s", f"`{answer}` after {time.monotonic() - start:.0f} s")
    finally:
        server.stop()


def probe_auth():
    # With loopback exempt from the per-address limits: hashing load against an ordinary login.
    server = Server("--limits-exempt-loopback")
    try:
        http(server.http, "POST", "/api/register", {"username": "probe_known", "password": "pw-known-1"})
        alone = []
        for _ in range(5):
            t = time.monotonic()
            http(server.http, "POST", "/api/login", {"username": "probe_known", "password": "pw-known-1"})
            alone.append(time.monotonic() - t)
        results = []

        def register(i):
            results.append(http(server.http, "POST", "/api/register",
                                {"username": f"probe_flood{i:03d}", "password": "pw-flood-1"})[0])
        threads = [threading.Thread(target=register, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        t = time.monotonic()
        status, _, _ = http(server.http, "POST", "/api/login", {"username": "probe_known", "password": "pw-known-1"})
        during = time.monotonic() - t
        for t in threads:
            t.join()
        counts = {k: results.count(k) for k in sorted(set(results))}
        row("ordinary login alone / during 50 concurrent registrations",
            f"{statistics.median(alone) * 1000:.0f} ms / {during * 1000:.0f} ms (status {status}); "
            f"registrations answered {counts}")
        # One wrong attempt per account (the per-account lockout would answer later ones at once).
        unknown, known, statuses = [], [], set()
        for i in range(20):
            t = time.monotonic()
            statuses.add(http(server.http, "POST", "/api/login",
                              {"username": f"probe_nobody{i:02d}", "password": "x-wrong-1"})[0])
            unknown.append(time.monotonic() - t)
            t = time.monotonic()
            statuses.add(http(server.http, "POST", "/api/login",
                              {"username": f"probe_flood{i:03d}", "password": "x-wrong-1"})[0])
            known.append(time.monotonic() - t)
        row("login time, unknown user vs known user with a wrong password (median of 20, interleaved)",
            f"{statistics.median(unknown) * 1000:.1f} ms vs {statistics.median(known) * 1000:.1f} ms "
            f"(answers {sorted(statuses)})")
    finally:
        server.stop()
    # Default limits: password guessing.
    server = Server()
    try:
        http(server.http, "POST", "/api/register", {"username": "probe_victim", "password": "pw-victim-1"})
        statuses = []
        for _ in range(40):
            status, head, _ = http(server.http, "POST", "/api/login",
                                   {"username": "probe_victim", "password": "guess-wrong"})
            statuses.append(status)
        first_429 = statuses.index(429) + 1 if 429 in statuses else None
        retry = [line for line in head.split("\r\n") if line.lower().startswith("retry-after")]
        row("40 wrong passwords in a row (default limits)",
            f"{statuses.count(401)} × 401, then 429 from attempt {first_429} ({', '.join(retry)})")
        regs = [http(server.http, "POST", "/api/register", {"username": f"probe_reg{i:02d}", "password": "pw-reg-1"})[0]
                for i in range(12)]
        row("12 registrations from one address (default limits)", f"{regs}")
    finally:
        server.stop()


def server_side_kernel_bytes(port):
    """Bytes the kernel holds for the server's side of every connection to `port` (receive + send queues, from
    `ss`'s skmem r and w), summed."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    total = 0
    for mem in out.split("skmem:(")[1:]:
        fields = mem.split(")")[0].split(",")
        for field in fields:
            if field[:1] in ("r", "w") and field[1:].isdigit():
                total += int(field[1:])
    return total


def is_closed(s):
    """Drains what the server sent (without reading it as a client would); true once the server closed."""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def probe_flood_memory(*extra):
    server = Server(*extra)
    try:
        server.settle()
        rss_before = server.rss_kib()
        socks = []
        burst = (b"PING :" + b"x" * 400 + b"\r\n") * 200
        for i in range(50):
            s = socket.create_connection(server.irc)
            s.sendall(f"NICK justinfan{60000 + i}\r\n".encode())
            s.setblocking(False)
            socks.append(s)
        sent = [0] * len(socks)
        peak_rss = rss_before
        start = time.monotonic()
        while time.monotonic() - start < 20:
            progress = False
            for i, s in enumerate(socks):
                try:
                    sent[i] += s.send(burst)
                    progress = True
                except OSError:
                    pass
            peak_rss = max(peak_rss, server.rss_kib())
            if not progress:
                time.sleep(0.05)
        rss_after = server.rss_kib()
        kernel = server_side_kernel_bytes(server.irc[1])
        closed = sum(1 for s in socks if is_closed(s))
        flags = " ".join(extra) or "defaults"
        row(f"50 anonymous clients sending PINGs and never reading, 20 s ({flags})",
            f"server RSS +{(max(peak_rss, rss_after) - rss_before) * 1024 // 50:,} B per client at the peak; "
            f"kernel queues of the server's side {kernel // 50:,} B per client; "
            f"{sum(sent) // 50:,} B of PINGs taken per client before the server paused reading; "
            f"{closed} of 50 closed by the server")
        for s in socks:
            s.close()
    finally:
        server.stop()


def probe_dns():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        row("vLLM endpoint by host name, DNS never answers", "skipped (needs root and unshare)")
        return
    # A DNS server that never answers (glibc's resolver asks port 53 of the configured address).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        silent.bind(("127.0.0.54", 53))
    except OSError as err:
        row("vLLM endpoint by host name, DNS never answers", f"skipped ({err})")
        return
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write("nameserver 127.0.0.54\noptions timeout:3 attempts:2\n")
    conf.close()
    wrapper = ["unshare", "-m", "sh", "-c", f'mount --bind {conf.name} /etc/resolv.conf && exec "$@"', "sh"]
    server = Server("--vllm", "http://vllm.probe.invalid:8000", prefix=wrapper)
    try:
        irc = socket.create_connection(server.irc, timeout=30)
        irc.sendall(b"NICK justinfan4242\r\n")
        time.sleep(0.5)
        irc.recv(65536)
        token_ok = http(server.http, "POST", "/api/register", {"username": "probe_dns", "password": "pw-dns-1"})
        token = json.loads(token_ok[2]).get("token")
        sender = socket.create_connection(server.irc, timeout=30)
        sender.sendall(f"PASS oauth:{token}\r\nNICK probe_dns\r\nJOIN #lobby\r\n".encode())
        time.sleep(0.5)
        rtts = []
        for i in range(20):
            sender.sendall(f"PRIVMSG #lobby :styled via a model we cannot resolve {i}\r\n".encode())
            t = time.monotonic()
            irc.sendall(f"PING :probe{i}\r\n".encode())
            buf = b""
            while f"probe{i}".encode() not in buf:
                buf += irc.recv(65536)
            rtts.append(time.monotonic() - t)
            time.sleep(0.2)
        row("PING round trips while the vLLM host name cannot be resolved (DNS silent)",
            f"max {max(rtts) * 1000:.1f} ms, median {statistics.median(rtts) * 1000:.1f} ms over 20")
    finally:
        server.stop()
        silent.close()
        os.unlink(conf.name)


def ws_connect(addr, tls=None):
    s = socket.create_connection(addr, timeout=10)
    if tls:
        s = tls.wrap_socket(s, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: irc\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    return s, head.split(b"\r\n\r\n", 1)[1]


def ws_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_read_all(s, rest):
    data = rest
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i:i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i:i + 8], "big")
            i += 8
        frames.append((opcode, data[i:i + n]))
        i += n
    return frames


def probe_protocol_errors(server):
    for name, frame in [("oversized WebSocket frame (1 MiB)", ws_frame(1, b"x" * (1 << 20))),
                        ("WebSocket text frame with invalid UTF-8", ws_frame(1, b"PING :\xff\xfe\r\n"))]:
        s, rest = ws_connect(server.http)
        try:
            s.sendall(frame)
        except OSError:
            pass
        frames = ws_read_all(s, rest)
        notice = any(op == 1 and b"NOTICE" in p for op, p in frames)
        close = [int.from_bytes(p[:2], "big") for op, p in frames if op == 8]
        row(name, f"NOTICE first: {'yes' if notice else 'no'}; close code {close[0] if close else 'none'}")
        s.close()
    # JOIN 10,000 channels in 10 lines.
    s = socket.create_connection(server.irc, timeout=10)
    s.sendall(b"NICK justinfan5151\r\n")
    for line in range(10):
        s.sendall(("JOIN " + ",".join(f"#nochan{line}x{i}" for i in range(1000)) + "\r\n").encode())
    s.sendall(b"PING :done\r\n")
    data = b""
    while b"PONG" not in data or b"done" not in data.split(b"PONG", 1)[1]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    notices = data.count(b" NOTICE ")
    row("JOIN of 10,000 channels in 10 lines", f"{len(data):,} B answered, {notices} NOTICE lines")
    s.close()
    # CAP LS without CAP END.
    s = socket.create_connection(server.irc, timeout=30)
    s.sendall(b"CAP LS 302\r\n")
    t = time.monotonic()
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    last = [line for line in data.decode(errors="replace").split("\r\n") if "NOTICE" in line]
    row("`CAP LS` and nothing more", f"closed after {time.monotonic() - t:.1f} s with `{last[-1] if last else ''}`")
    s.close()


def probe_headers(server):
    _, head, _ = http(server.http, "GET", "/")
    csp = [line for line in head.split("\r\n") if line.lower().startswith("content-security-policy")]
    row("web client headers", "CSP with frame-ancestors 'none'" if csp and "frame-ancestors 'none'" in csp[0]
        else "no CSP")


def main():
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release -p twitchy-engine")
    server = Server()
    try:
        probe_promtool(server)
        probe_protocol_errors(server)
        probe_headers(server)
    finally:
        server.stop()
    probe_tls()
    probe_http_limits()
    probe_auth()
    probe_flood_memory()
    probe_flood_memory("--socket-send-buffer-bytes", "65536")
    probe_dns()
    print("| probe | result after the change |")
    print("|---|---|")
    for probe, result in ROWS:
        print(f"| {probe} | {result} |")


if __name__ == "__main__":
    main()
