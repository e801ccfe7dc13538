#!/usr/bin/env python
"""What shared state costs the gateway: two replicas on PostgreSQL (keys, usage, workers) and
Redis (rate limits) against one replica with its embedded defaults (SQLite, limits in memory).

One engine worker (transformers engine; the tiny random llama of ``swiftmesh.testing.tiny`` by
default, or ``--model-dir`` e.g. SmolLM2) serves every configuration; PostgreSQL and Redis come
from the system packages (``swiftmesh.testing.servers``, loopback). Every request carries an API
key with per-minute limits on requests and tokens set high enough never to refuse, so each
request does the whole path: key lookup, request window, token window, usage counts.

Configurations (each its own gateway processes, all up at once, measured in alternating order
round by round so that drift in the machine's load hits all alike):

* ``memory-1``: one gateway, SQLite + ``memory://`` limits (the default);
* ``shared-1``: one gateway on PostgreSQL + Redis (the cost of the stores alone);
* ``shared-2``: two gateways on the same PostgreSQL + Redis, the clients split evenly between
  them (what the issue asks for: two replicas behind a load balancer).

Load: ``--concurrency`` closed-loop clients (default 16) streaming chat completions of exactly
``--max-tokens`` tokens (``ignore_eos``), ``--requests`` per round. Reported, medians over rounds:

* output throughput (completion tokens / wall time) per configuration and the ratios
  shared-2 / memory-1 (goal: >= 0.95, i.e. shared limits cost at most 5%) and shared-1 / memory-1;
* CPU seconds per 1000 output tokens of each part: the gateway process(es), the stores
  (redis-server, the PostgreSQL server and its backends) and the worker. On a machine shared with
  other work the wall-time ratios swing with the others' load; the CPU cost does not, so the
  summary also gives the throughput ratio the CPU figures imply for a CPU-bound host
  (``cpu_bound_ratio``: CPU per token of memory-1 / CPU per token of the configuration, all parts,
  with the worker's part taken as the median over every run, since it is the same worker doing
  the same work in each configuration and only the machine's load moves it).

    python bench/gateway/shared_limits.py --rounds 4 --out bench/gateway/results/shared_limits.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_vs_vllm import PROMPTS, one_stream

from swiftmesh.testing.servers import postgres_server, redis_server
from swiftmesh.testing.services import ServiceProcess, run_sync, settings_for

#: Per-minute limits of the benchmark's key: exercised on every request, never reached.
KEY_RPM, KEY_TPM = 1_000_000, 1_000_000_000


def _listener_pid(port: int) -> int:
    """The pid of the process listening on loopback ``port``."""
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return c.pid
    raise RuntimeError(f"no process listens on port {port}")


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of ``pids`` and all their children now."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


async def run_load(bases: list[str], key: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    """``concurrency`` closed-loop streams spread evenly over ``bases`` until ``requests`` are done."""
    results: list[tuple[float, int, int]] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def stream(slot: int) -> None:
            url = f"{bases[slot % len(bases)]}/v1/chat/completions"
            for i in counter:
                body = {"model": model, "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True,
                        "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (request {i})"}],
                        "stream": True, "stream_options": {"include_usage": True}}
                results.append(await one_stream(client, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(stream(s) for s in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    return {"requests": len(results), "completion_tokens": tokens, "wall_s": wall, "throughput_tok_s": tokens / wall,
            "ttft_median_ms": statistics.median(r[0] for r in results) * 1000, "load_avg_1m": os.getloadavg()[0]}


def _gateway(workdir: Path, name: str, worker: str, **gateway) -> ServiceProcess:
    settings = settings_for(workdir / name, gateway={"workers": [worker], "health_check_interval_s": 2.0, **gateway},
                            telemetry={"log_level": "WARNING"})
    return ServiceProcess("gateway", settings)


async def _create_key(gw: ServiceProcess) -> str:
    from swiftmesh.clients.gateway import GatewayClient

    async with GatewayClient(gw.settings) as c:
        return (await c.create_api_key("bench", requests_per_minute=KEY_RPM, tokens_per_minute=KEY_TPM))[1]


def _wait_served(base: str, key: str, model: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
            if r.status_code == 200 and any(m["id"] == model for m in r.json()["data"]):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{base} does not serve {model} after {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="HF model directory (default: a tiny random llama)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=96, help="requests per round and configuration")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-shared-limits-"))
    if args.model_dir is None:
        from swiftmesh.testing.tiny import make_tiny_llama

        args.model_dir = make_tiny_llama(workdir / "tiny-llama")
    model = args.model_dir.name
    with ExitStack() as stack:
        pg = stack.enter_context(postgres_server(workdir))
        redis = stack.enter_context(redis_server(workdir))
        wsettings = settings_for(workdir / "worker", worker={"model": str(args.model_dir.resolve()), "device": "cpu"},
                                 telemetry={"log_level": "WARNING"})
        worker = stack.enter_context(ServiceProcess("worker", wsettings))
        shared = {"database_url": pg, "redis_url": redis}
        gateways = {
            "memory-1": [_gateway(workdir, "memory", worker.target)],
            "shared-1": [_gateway(workdir, "shared-one", worker.target, **shared)],
            "shared-2": [_gateway(workdir, f"shared-{i}", worker.target, **shared) for i in "ab"],
        }
        for procs in gateways.values():
            for p in procs:
                stack.enter_context(p)
        keys = {"memory-1": run_sync(_create_key(gateways["memory-1"][0])),
                "shared-1": run_sync(_create_key(gateways["shared-1"][0]))}
        keys["shared-2"] = keys["shared-1"]  # one database: a key made on one replica works on all
        bases = {name: [p.http_url for p in procs] for name, procs in gateways.items()}
        for name, urls in bases.items():
            for url in urls:
                _wait_served(url, keys[name], model)
        print(f"worker {worker.target}, model {model}; warming up", flush=True)
        for name, urls in bases.items():
            asyncio.run(run_load(urls, keys[name], model, args.concurrency, args.concurrency, args.max_tokens))
        stores = [_listener_pid(int(u.rsplit(":", 1)[1].split("/")[0])) for u in (pg, redis)]
        parts = {name: {"gateway": [p.pid for p in procs], "stores": stores if name != "memory-1" else [],
                        "worker": [worker.pid]} for name, procs in gateways.items()}
        runs: dict[str, list[dict]] = {name: [] for name in bases}
        names = list(bases)
        try:  # Ctrl-C (or timeout -s INT) ends the run early: the full rounds done so far are reported
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    before = {part: _cpu(pids) for part, pids in parts[name].items()}
                    res = asyncio.run(run_load(bases[name], keys[name], model, args.concurrency, args.requests,
                                               args.max_tokens))
                    res["cpu_s_per_1k_tokens"] = {part: (_cpu(pids) - before[part]) * 1000 / max(res["completion_tokens"], 1)
                                                  for part, pids in parts[name].items()}
                    runs[name].append(res)
                    c = res["cpu_s_per_1k_tokens"]
                    print(f"round {r + 1} {name}: {res['throughput_tok_s']:7.1f} tok/s, median TTFT "
                          f"{res['ttft_median_ms']:6.1f} ms; CPU s per 1k tokens: gateway {c['gateway']:.3f}, stores "
                          f"{c['stores']:.3f}, worker {c['worker']:.3f} (load avg {res['load_avg_1m']:.1f})", flush=True)
        except KeyboardInterrupt:
            print("interrupted: reporting the complete rounds", flush=True)
        done = min(len(v) for v in runs.values())
        runs = {name: v[:done] for name, v in runs.items()}
        if not done:
            sys.exit("no complete round")

    def ratio(name: str) -> float:
        return statistics.median(s["throughput_tok_s"] / m["throughput_tok_s"]
                                 for s, m in zip(runs[name], runs["memory-1"]))

    def cpu(name: str, part: str) -> float:
        return statistics.median(x["cpu_s_per_1k_tokens"][part] for x in runs[name])

    cpu_parts = {n: {p: cpu(n, p) for p in ("gateway", "stores", "worker")} for n in runs}
    worker_cpu = statistics.median(x["cpu_s_per_1k_tokens"]["worker"] for v in runs.values() for x in v)
    cpu_total = {n: v["gateway"] + v["stores"] + worker_cpu for n, v in cpu_parts.items()}
    summary = {
        "model": str(args.model_dir), "engine": "transformers", "cpus": os.cpu_count(),
        "concurrency": args.concurrency, "max_tokens": args.max_tokens, "requests_per_round": args.requests,
        "rounds": args.rounds,
        "throughput_tok_s": {n: statistics.median(x["throughput_tok_s"] for x in v) for n, v in runs.items()},
        "ratio_shared2_vs_memory1": ratio("shared-2"), "ratio_shared1_vs_memory1": ratio("shared-1"),
        "cpu_s_per_1k_tokens": cpu_parts,
        "cpu_bound_ratio": {n: cpu_total["memory-1"] / cpu_total[n] for n in runs},
        "load_avg_1m": [x["load_avg_1m"] for v in runs.values() for x in v],
        "runs": runs, "logs": str(workdir),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    print(f"two replicas on PostgreSQL + Redis / one in memory: {summary['ratio_shared2_vs_memory1']:.3f} "
          f"(goal >= 0.95); one replica on them: {summary['ratio_shared1_vs_memory1']:.3f}; implied by CPU per "
          f"token: {summary['cpu_bound_ratio']['shared-2']:.3f} and {summary['cpu_bound_ratio']['shared-1']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
