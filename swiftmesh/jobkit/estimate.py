"""Memory and time estimates of a training job, per worker, before anything runs.

Memory per worker (bytes) under data parallelism over N workers:

* weights: every parameter at its storage width (fp32: 4 bytes; bf16: 2; QLoRA's 4-bit NF4
  linear weights: ~0.53 bytes with double-quantized scales); ZeRO-3 partitions them (/N).
* gradients: trainable parameters x 4 bytes; ZeRO-2 and ZeRO-3 partition them (/N).
* optimizer states: AdamW's two moments, 8 bytes per trainable parameter (+4 for the fp32
  master copy under DeepSpeed mixed precision); every ZeRO stage partitions them (/N).
  ZeRO-3-offload moves them and the parameters to CPU memory: on a GPU node that frees the
  device; on CPU workers it is the same host memory (noted in the estimate).
* activations: per layer ``s*b*h*(34 + 5*a*s/h)`` bytes at 16 bits (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", arXiv:2205.05198), doubled
  at fp32; with gradient checkpointing only each layer's input (``2*s*b*h``) plus one layer;
  plus the logits and their gradient (``2*s*b*V*4``).
* a fixed framework overhead (PyTorch, the Ray worker, buffers).

FLOPs per token: ``6 P`` for full fine-tuning, ``4 P`` with a frozen base (no weight gradients,
Kaplan et al. 2020 arXiv:2001.08361's ``C = 6 N D``), ``+2 P`` when activations are recomputed,
plus attention ``12 L s h``. Time = FLOPs / (workers x per-worker FLOP/s x utilisation) + start-up.
The machine's peak comes from a short matmul measurement (:func:`machine_peak_flops`).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field

FRAMEWORK_OVERHEAD_BYTES = 600 * 1024**2
# Share of peak FLOP/s a CPU training step reaches (measured by bench/trainer on LoRA SFT).
DEFAULT_UTILISATION = 0.15
STARTUP_SECONDS = 25.0


@dataclass
class Estimate:
    """Memory per worker (bytes) and time of a job, as EstimateJob answers it.

    Attributes:
        weights_bytes / gradients_bytes / optimizer_states_bytes / activations_bytes: the parts
            of the memory per worker.
        total_bytes_per_worker: their sum plus the framework overhead.
        available_bytes_per_worker: what a worker has (its reservation, or its share of a node).
        fits: total <= available.
        estimated_duration_s: wall time, seconds (start-up included).
        trainable_parameters / total_parameters: parameter counts.
        notes: how the numbers were reached, for people.
        total_flops: training FLOPs of the whole job.
    """

    weights_bytes: int = 0
    gradients_bytes: int = 0
    optimizer_states_bytes: int = 0
    activations_bytes: int = 0
    total_bytes_per_worker: int = 0
    available_bytes_per_worker: int = 0
    fits: bool = False
    estimated_duration_s: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    notes: list[str] = field(default_factory=list)
    total_flops: float = 0.0


@dataclass
class ModelShape:
    """What the estimate needs of a model (from its config, without loading weights)."""

    total_params: int
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int
    # Parameters in nn.Linear layers inside the decoder blocks (what 4-bit quantizes), and
    # (in_features, out_features, module name) of each, for LoRA parameter counts.
    linear_params: int = 0
    linears: list[tuple[int, int, str]] = field(default_factory=list)
    embedding_params: int = 0


@functools.lru_cache(maxsize=32)
def model_shape(model_dir: str) -> ModelShape:
    """Shape of a HF model directory, built on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    linears = []
    lin_params = 0
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and "lm_head" not in n:
            linears.append((m.in_features, m.out_features, n))
            lin_params += m.weight.numel()
    emb = model.get_input_embeddings().weight.numel()
    tc = getattr(config, "get_text_config", lambda: config)()
    return ModelShape(
        total_params=total,
        num_layers=int(getattr(tc, "num_hidden_layers", 1)),
        hidden_size=int(getattr(tc, "hidden_size", 1)),
        num_heads=int(getattr(tc, "num_attention_heads", 1)),
        vocab_size=int(getattr(tc, "vocab_size", 1)),
        linear_params=lin_params,
        linears=linears,
        embedding_params=emb,
    )


def lora_trainable_params(shape: ModelShape, r: int, target_modules: list[str], use_dora: bool = False) -> int:
    """Parameters a LoRA adapter of rank r adds: r*(in+out) per targeted linear (+out for DoRA's
    magnitude vector). "all-linear" targets every linear layer of the blocks."""
    all_linear = not target_modules or target_modules == ["all-linear"] or "all-linear" in target_modules
    n = 0
    for fin, fout, name in shape.linears:
        leaf = name.rsplit(".", 1)[-1]
        if all_linear or leaf in target_modules or name in target_modules:
            n += r * (fin + fout) + (fout if use_dora else 0)
    return n


@dataclass
class MemoryPlan:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    notes: list[str]

    @property
    def total(self) -> int:
        """Bytes per worker, every part and the overhead."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead


def estimate_memory(
    shape: ModelShape,
    *,
    trainable_params: int,
    full: bool,
    qlora: bool,
    zero_stage: int,
    offload: bool,
    world_size: int,
    micro_batch: int,
    seq_len: int,
    bf16: bool,
    gradient_checkpointing: bool,
    extra_frozen_copies: int = 0,
) -> MemoryPlan:
    """Per-worker memory (see the module docstring). ``extra_frozen_copies``: frozen copies of
    the model held besides the trained one (e.g. a DPO reference model in full fine-tuning)."""
    notes: list[str] = []
    n = max(1, world_size)
    if qlora:
        frozen = shape.total_params - shape.linear_params
        weights = int(shape.linear_params * 0.53 + frozen * 4)
        notes.append("QLoRA: block linear weights as 4-bit NF4 with double quantization (~0.53 bytes/param)")
    else:
        weights = shape.total_params * 4
    weights += trainable_params * 4 if not full else 0
    weights *= 1 + extra_frozen_copies
    grads = trainable_params * 4
    opt = trainable_params * (8 + (4 if (bf16 and zero_stage) else 0))
    if zero_stage >= 1:
        opt //= n
    if zero_stage >= 2:
        grads //= n
    if zero_stage >= 3:
        weights //= n
        notes.append(f"ZeRO-3 partitions parameters, gradients and optimizer states over {n} workers")
    elif zero_stage == 2:
        notes.append(f"ZeRO-2 partitions gradients and optimizer states over {n} workers")
    if offload:
        notes.append("ZeRO-3 offload keeps parameters and optimizer states in CPU memory (on CPU workers that is the same memory)")
    s, b, h, a, L, V = seq_len, micro_batch, shape.hidden_size, shape.num_heads, shape.num_layers, shape.vocab_size
    per_layer_16 = s * b * h * (34 + 5 * a * s / h)
    width = 1.0 if bf16 else 2.0
    if gradient_checkpointing:
        acts = 2 * s * b * h * L * width + per_layer_16 * width
        notes.append("gradient checkpointing: only layer inputs are kept, one layer recomputed at a time")
    else:
        acts = per_layer_16 * L * width
    acts += 2 * s * b * V * 4
    return MemoryPlan(int(weights), int(grads), int(opt), int(acts), FRAMEWORK_OVERHEAD_BYTES, notes)


def flops_per_token(shape: ModelShape, *, full: bool, gradient_checkpointing: bool, seq_len: int) -> float:
    """Training FLOPs per token: 6P full, 4P frozen base, +2P recompute, + attention 12*L*s*h."""
    p = shape.total_params - shape.embedding_params
    base = (6 if full else 4) * p + (2 * p if gradient_checkpointing else 0)
    return base + 12 * shape.num_layers * seq_len * shape.hidden_size


@functools.cache
def machine_peak_flops(bf16: bool = False) -> float:
    """Measured matmul FLOP/s of this host (all cores) in fp32 or bf16: a 0.3 s probe, cached.
    Set ``SWIFTMESH_PEAK_FLOPS`` to override."""
    env = os.environ.get("SWIFTMESH_PEAK_FLOPS")
    if env:
        return float(env)
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        reps = 0
        while time.perf_counter() - t0 < 0.1:
            torch.mm(a, b)
            reps += 1
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
    return best


def fill_estimate(
    est: Estimate,
    mem: MemoryPlan,
    *,
    available_bytes_per_worker: int,
    total_flops: float,
    num_workers: int,
    cpus_per_worker: float,
    bf16: bool,
    trainable_params: int,
    total_params: int,
    gpus_per_worker: float = 0.0,
    utilisation: float = DEFAULT_UTILISATION,
) -> Estimate:
    """Fill ``est`` from the memory plan and the FLOPs of the job (bytes, FLOPs; the time
    assumes ``utilisation`` of the machine's peak FLOP/s); returns it."""
    est.weights_bytes = mem.weights
    est.gradients_bytes = mem.gradients
    est.optimizer_states_bytes = mem.optimizer
    est.activations_bytes = mem.activations
    est.total_bytes_per_worker = mem.total
    est.available_bytes_per_worker = int(available_bytes_per_worker)
    est.fits = mem.total <= available_bytes_per_worker
    est.trainable_parameters = int(trainable_params)
    est.total_parameters = int(total_params)
    est.total_flops = float(total_flops)
    est.notes.extend(mem.notes)
    est.notes.append(f"includes {mem.overhead / 2**20:.0f} MiB framework overhead per worker")
    cores = os.cpu_count() or 1
    if gpus_per_worker:
        per_worker = 100e12 * gpus_per_worker
        est.notes.append("time assumes ~100 TFLOP/s per GPU at the stated utilisation")
    else:
        per_worker = machine_peak_flops(bf16) * min(1.0, max(cpus_per_worker, 1.0) / cores)
    rate = max(1.0, per_worker * max(1, num_workers) * utilisation)
    seconds = total_flops / rate + STARTUP_SECONDS
    est.estimated_duration_s = int(seconds * 1e9) / 1e9
    est.notes.append(
        f"time: {total_flops:.3g} FLOPs at {utilisation:.0%} of {per_worker:.3g} FLOP/s per worker "
        f"x {max(1, num_workers)} workers, + {STARTUP_SECONDS:.0f} s start-up"
    )
    if not est.fits:
        est.notes.append(
            f"does not fit: needs {mem.total / 2**30:.2f} GiB per worker, {available_bytes_per_worker / 2**30:.2f} GiB available"
        )
    return est


def gib(n: float) -> str:
    """"1.50 GiB" for 1.5 * 2**30 bytes."""
    return f"{n / 2**30:.2f} GiB"


__all__ = [
    "Estimate",
    "MemoryPlan",
    "ModelShape",
    "estimate_memory",
    "fill_estimate",
    "flops_per_token",
    "gib",
    "lora_trainable_params",
    "machine_peak_flops",
    "model_shape",
]
