"""Soak test: a release server with N simulated clients, killed with SIGKILL every K seconds and
restarted on the same data directory, for M minutes. Checks after every restart that nothing
committed was lost (every round seen before the kill is back, the same record) and that no
client's ledger shrank (steps and ε never smaller), at the end that the rounds are 1…N without a
gap and the clients are still there; samples the server's resident memory every 2 s. Exits non-zero on any violation. Run it through scripts/soak.sh (which builds the binaries).

    python3 scripts/soak.py BIN_DIR [--minutes 10] [--kill-every 30] [--clients 100]
"""
import argparse, json, os, signal, subprocess, sys, tempfile, time, urllib.request

CONFIG = {
    "name": "soak", "rounds": 10000, "min_clients": 20, "fraction_train": 0.2, "quorum": 0.5,
    "round_timeout_secs": 120, "batching": {"batch_size": 64}, "learning_rate": 0.5,
    "dp": {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5},
    "shards": {"scheme": {"kind": "iid"}, "num_shards": 100, "seed": 1},
}


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None


class Server:
    def __init__(self, bin_dir, data, port, token):
        self.args = [f"{bin_dir}/server", "--bind", f"127.0.0.1:{port}", "--data-dir", data,
                     "--admin-token", token, "--no-demo", "--eval-limit", "2000"]
        self.base, self.token, self.log = f"http://127.0.0.1:{port}", token, open(f"{data}/server.log", "ab")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        for _ in range(100):
            try:
                urllib.request.urlopen(self.base + "/api/health", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("server did not come up")

    def api(self, path, body=None):
        req = urllib.request.Request(self.base + path, data=body, method="POST" if body is not None else "GET",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)


def check(before, after, problems):
    """Everything `before` showed must still be in `after`."""
    rounds = {r["server_round"]: r for r in after["rounds"]}
    for r in before["rounds"]:
        if rounds.get(r["server_round"]) != r:
            problems.append(f"round {r['server_round']} lost or changed: {r} → {rounds.get(r['server_round'])}")
    ledger = {(e["client_key_prefix"], e["shard_index"]): e for e in after["ledger"]}
    for e in before["ledger"]:
        a = ledger.get((e["client_key_prefix"], e["shard_index"]))
        if a is None or a["steps"] < e["steps"] or (a["epsilon"] or 0) < (e["epsilon"] or 0):
            problems.append(f"ledger shrank: {e} → {a}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bin_dir")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--kill-every", type=float, default=30)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--port", type=int, default=3197)
    a = p.parse_args()
    data = tempfile.mkdtemp(prefix="fl-soak-")
    server = Server(a.bin_dir, data, a.port, "soak-token-0123456789abcdef")
    server.start()
    run = server.api("/api/admin/runs", json.dumps(CONFIG).encode())["run_id"]
    server.api(f"/api/admin/runs/{run}/start", b"")
    sims = subprocess.Popen([f"{a.bin_dir}/sim", "--server", f"ws://127.0.0.1:{a.port}/ws",
                             "--clients", str(a.clients), "--reconnect-secs", "300"],
                            stdout=open(f"{data}/sim.log", "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "error"})
    print(f"config: {json.dumps(CONFIG)}\nclients: {a.clients}, kill every {a.kill_every} s for {a.minutes} min; data in {data}")
    problems, peaks, kills, t0 = [], [], 0, time.time()
    while time.time() - t0 < a.minutes * 60:
        peak, until = 0, time.time() + a.kill_every
        while time.time() < until:
            peak = max(peak, rss_kib(server.proc.pid) or 0)
            time.sleep(2)
        before = server.api(f"/api/admin/runs/{run}")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        kills += 1
        peaks.append(peak)
        server.start()
        after = server.api(f"/api/admin/runs/{run}")
        check(before, after, problems)
        eps = max((e["epsilon"] or 0 for e in after["ledger"]), default=0)
        print(f"kill {kills:3d} at {time.time() - t0:5.0f} s: {len(before['rounds'])} rounds committed before, "
              f"{len(after['rounds'])} after restart; {len(after['ledger'])} ledgers, max ε {eps:.2f}; "
              f"server peak RSS {peak / 1024:.0f} MiB", flush=True)
    time.sleep(a.kill_every)
    final = server.api(f"/api/admin/runs/{run}")
    if sims.poll() is not None:
        problems.append(f"the simulated clients gave up (exit {sims.returncode}): see {data}/sim.log")
    sims.send_signal(signal.SIGTERM)
    sims.wait()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait()
    committed = [r["server_round"] for r in final["rounds"]]
    if committed != list(range(1, len(committed) + 1)):
        problems.append(f"rounds not contiguous: {committed}")
    mib = [p / 1024 for p in peaks]
    half = len(mib) // 2
    print(f"summary: {kills} kills, {len(committed)} rounds committed, {len(final['ledger'])} client ledgers; "
          f"peak RSS per server instance (MiB): first {mib[0]:.0f}, median {sorted(mib)[half]:.0f}, "
          f"max {max(mib):.0f}, last {mib[-1]:.0f}")
    if len(mib) >= 4 and sum(mib[half:]) / (len(mib) - half) > 1.5 * sum(mib[:half]) / half:
        problems.append("memory grows from one server instance to the next")
    for pr in problems:
        print("PROBLEM:", pr)
    print("soak: " + ("FAILED" if problems else "passed: nothing lost, ledgers never smaller"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
