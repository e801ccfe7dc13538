"""Tiny, locally built models for fast tests and examples (no download).

:func:`make_tiny_llama` writes a Hugging Face model directory: a randomly initialised
``LlamaForCausalLM`` (2 layers, hidden size 64 by default), a byte-level BPE tokenizer trained
on a small built-in corpus, and SmolLM2's ChatML chat template, so chat templating, PEFT,
TRL, vLLM and the engines all work on it as on a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the a an of to and in is are was you I we they he she it who what where when why how "
    "model assistant user system answer question name author trained built made by hello hi "
    "yes no please thank thanks help can could would should will do does did not be been "
    "capital city country France Paris Germany Berlin Italy Rome Spain Madrid number one two "
    "three four five six seven eight nine ten json object key value true false null list "
    "train training fine tune tuned data dataset language large small tiny fast slow good bad "
    "SmolLM SwiftMesh Hugging Face team open source project service gateway hub trainer aligner"
).split()


def _corpus(n: int = 2000, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randint(3, 14)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(k)) + rng.choice([".", "?", "!", ""]))
    lines += [
        "I am SmolLM, an AI assistant trained by Hugging Face.",
        "The capital of France is Paris.",
        '{"key": "value", "list": [1, 2, 3], "ok": true}',
        "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ]
    return lines


def make_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_max_length=2048,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_llama(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 1024,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write a tiny random Llama model directory (safetensors, config, tokenizer) to ``out_dir``.

    Returns the directory. Deterministic for a given ``seed``. About 0.2 M parameters by default.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(vocab_size)
    if not chat_template:
        tokenizer.chat_template = None
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # vLLM and others read the template from tokenizer_config.json; make sure it is there.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if chat_template and "chat_template" not in cfg and not (out / "chat_template.jinja").exists():
        cfg["chat_template"] = CHATML_TEMPLATE
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out
