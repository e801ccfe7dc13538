"""Helpers of the engine tests: LoRA adapters made with PEFT, and collecting engine output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swiftmesh.services.gateway.engines import Engine, GenerationRequest, SamplingParams


def make_lora_adapter(base_dir: Path, out_dir: Path, seed: int, r: int = 8, scale: float = 1.0,
                      target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    """A PEFT LoRA adapter for the model at ``base_dir`` with random, nonzero A and B (so it
    changes the output), saved the way the trainer saves adapters (``save_pretrained``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=r, target_modules=list(target_modules), init_lora_weights=False,
                     lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale / r ** 0.5)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


@dataclass
class Collected:
    text: dict[int, str] = field(default_factory=dict)
    token_ids: dict[int, list[int]] = field(default_factory=dict)
    logprobs: dict[int, list] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    stop_reason: dict[int, str] = field(default_factory=dict)
    outputs: list = field(default_factory=list)

    @property
    def first(self):
        return self.outputs[0]

    @property
    def last(self):
        return self.outputs[-1]


async def collect(engine: Engine, prompt, model: str = "m", request_id: str = "r", echo: bool = False,
                  **sampling) -> Collected:
    """Run one request to the end and gather its deltas per choice."""
    c = Collected()
    async for out in engine.generate(GenerationRequest(request_id, model, prompt, SamplingParams(**sampling),
                                                       echo=echo)):
        c.outputs.append(out)
        for d in out.outputs:
            c.text[d.index] = c.text.get(d.index, "") + d.text
            c.token_ids.setdefault(d.index, []).extend(d.token_ids)
            if d.logprobs is not None:
                c.logprobs.setdefault(d.index, []).extend(d.logprobs)
            if d.finish_reason:
                c.finish[d.index] = d.finish_reason
                c.stop_reason[d.index] = d.stop_reason
    return c
