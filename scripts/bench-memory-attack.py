"""Memory under a connection-flood attack: N WebSocket connections that say hello and then each
send most of a maximal binary message and hold it (the server buffers what a connection sends
until the message is complete). Prints the server's resident memory before, at the peak while
the connections are held, and after they close.

    python3 scripts/bench-memory-attack.py PORT SERVER_PID [--connections 800] [--hold 30]

Start the server with `--no-demo` on a fresh data directory; see BENCHMARKS.md.
"""
import argparse, socket, struct, time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def frame(opcode, payload, length=None):
    """A masked client frame (mask key 0, so the payload is sent as is) announcing `length`."""
    n = len(payload) if length is None else length
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + payload


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buf += chunk
    if b" 101 " not in buf.split(b"\r\n")[0]:
        raise ConnectionError(buf.split(b"\r\n")[0].decode())
    hello = b'{"type":"hello","protocol_version":2,"client_key":null,"capabilities":{"name":"flood"}}'
    s.sendall(frame(0x1, hello))
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("pid", type=int)
    p.add_argument("--connections", type=int, default=800)
    p.add_argument("--hold", type=float, default=30)
    p.add_argument("--announce", type=int, default=65_000, help="bytes each message claims")
    a = p.parse_args()
    before = rss_mib(a.pid)
    socks, refused = [], 0
    for _ in range(a.connections):
        try:
            s = connect(a.port)
            # Most of the announced message, never the rest.
            s.sendall(frame(0x2, b"\1" * (a.announce - 1024), a.announce)[: a.announce - 1024 + 14])
            socks.append(s)
        except OSError:
            refused += 1
    peak, until = before, time.time() + a.hold
    while time.time() < until:
        peak = max(peak, rss_mib(a.pid))
        time.sleep(0.5)
    for s in socks:
        s.close()
    time.sleep(15)
    after = rss_mib(a.pid)
    print(f"{len(socks)} connections held ({refused} refused), each {a.announce - 1024} B into a "
          f"{a.announce} B message, for {a.hold:.0f} s")
    print(f"server RSS: before {before:.0f} MiB, peak {peak:.0f} MiB, 15 s after closing {after:.0f} MiB")


if __name__ == "__main__":
    main()
