"""Loading the policy, its tokenizer, PEFT adapters and reference models for alignment.

The reference model (what DPO, KTO, PPO and GRPO measure the policy's drift against):

* **PEFT, new adapter**: the policy with its adapter disabled (``model.disable_adapter()``):
  no second copy of the weights.
* **PEFT, starting from an adapter** (the usual SFT-then-align chain): the reference must be
  the SFT policy, not the bare base model (TRL and ms-swift do the same; Rafailov et al. 2023
  take pi_ref = pi_SFT). The SFT adapter is loaded trainable as ``"default"`` and a frozen copy
  is added as the adapter ``"ref"``; the reference forward pass switches to ``"ref"``. Memory
  cost: one extra adapter (a few MB), never a second base model. TRL's DPO, KTO and GRPO
  trainers add that copy themselves when given a ``PeftModel`` with a trained adapter; our PPO
  trainer does the same.
* **Full fine-tuning**: a frozen copy of the initial policy (``ref_model`` when given), which
  TRL prepares with DeepSpeed (sharded under ZeRO-3) when DeepSpeed is on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.settings import LoraSettings, Tuner
from swiftmesh.runtime.errors import FailedPrecondition, InvalidArgument

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` holds a PEFT adapter (``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).exists()


def read_adapter_base(path: str | Path) -> str:
    """The ``base_model_name_or_path`` recorded in an adapter's config."""
    cfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise FailedPrecondition(f"adapter {path} does not record its base model", reason="ADAPTER_WITHOUT_BASE")
    return base


def has_tokenizer(path: str | Path) -> bool:
    """Whether ``path`` holds a tokenizer (tokenizer_config.json)."""
    p = Path(path)
    return (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists()


def load_tokenizer(model_dir: str, adapter_dir: str | None = None, chat_template: str | None = None,
                   padding_side: str | None = None):
    """The tokenizer of the adapter (when it ships one) or of the model.

    The pad token defaults to the EOS token; ``chat_template`` replaces the tokenizer's template.
    """
    from transformers import AutoTokenizer

    src = adapter_dir if adapter_dir and has_tokenizer(adapter_dir) else model_dir
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat_template:
        tok.chat_template = chat_template
    if padding_side:
        tok.padding_side = padding_side
    return tok


def peft_config(tuner: Tuner, lora: LoraSettings, task_type: str = "CAUSAL_LM"):
    """A ``peft.LoraConfig`` for a PEFT tuner (lora, qlora, dora, rslora, lora+), built by the
    shared :func:`swiftmesh.jobkit.hf.lora_config` (DoRA: Liu et al. 2024, arXiv:2402.09353;
    rsLoRA: Kalajdzievski 2023, arXiv:2312.03732)."""
    from swiftmesh.jobkit import hf

    return hf.lora_config(tuner, lora, task_type)


def quantization_config(tuner: Tuner, bf16: bool):
    """bitsandbytes 4-bit NF4 for QLoRA (Dettmers et al. 2023, arXiv:2305.14314), else None."""
    if tuner != Tuner.QLORA:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
    )


def load_causal_lm(path: str, *, dtype=None, quantization=None, device_map=None):
    """``AutoModelForCausalLM.from_pretrained`` with our defaults (float32 unless told)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise InvalidArgument(f"cannot load a causal language model from {path}: {e}", reason="BAD_MODEL") from None


def load_adapter_trainable(model, adapter_dir: str):
    """Wrap ``model`` with the adapter in ``adapter_dir``, trainable, as adapter ``"default"``."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


def merge_adapter_into(base_dir: str, adapter_dir: str, out_dir: str | Path, *, dtype=None) -> Path:
    """Merge a LoRA adapter into its base and save the result (full fine-tuning from an adapter)."""
    from peft import PeftModel

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    model = load_causal_lm(base_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    return out


def add_reference_adapter(model, name: str = "ref") -> None:
    """Add a frozen copy of the ``"default"`` adapter under ``name`` (the SFT reference)."""
    cfg = model.peft_config["default"]
    model.add_adapter(name, cfg)
    for pname, param in model.named_parameters():
        if ".default." in pname:
            ref = model.get_parameter(pname.replace(".default.", f".{name}."))
            ref.data.copy_(param.data)
            ref.requires_grad_(False)
    model.set_adapter("default")


def save_policy(model, tokenizer, out_dir: str | Path) -> str:
    """Save the trained policy: only the ``"default"`` adapter for PEFT models (not the ``"ref"``
    copy), the full model otherwise; and the tokenizer. Returns ``"adapter"`` or ``"full"``."""
    from peft import PeftModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        model.save_pretrained(out, selected_adapters=["default"])
        kind = "adapter"
    else:
        model.save_pretrained(out)
        kind = "full"
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return kind


def merge_seq_cls_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a sequence-classification LoRA adapter (a reward model, its ``score`` head saved
    with it) into ``base_dir`` and save the full one-label classifier plus tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=1, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    src = adapter_dir if has_tokenizer(adapter_dir) else base_dir
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out
