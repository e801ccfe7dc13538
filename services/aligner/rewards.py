"""Rewards for online methods (PPO, GRPO): built-in reward functions and reward models.

A *reward function* follows TRL's GRPO convention, so the same callables serve
``trl.GRPOTrainer`` and our :class:`~swiftmesh.services.aligner.ppo.PPOTrainer`::

    fn(prompts: list, completions: list, completion_ids: list[list[int]], **columns) -> list[float]

``completions`` are strings, or (conversational data) lists holding one assistant message;
``columns`` are the dataset's extra columns (e.g. ``solution``), one list per column.

Built-in functions, named as in ``PpoConfig.reward_funcs`` / ``GrpoConfig.reward_funcs``:

=======================  ====================================================================
``token_count:<id>``     number of times token id ``<id>`` occurs in the completion
                         (``<id>,<id>,...``: tokens of any of these ids)
``token_count:<text>``   number of (non-overlapping) occurrences of ``<text>`` in the completion
``contains:<text>``      1.0 when the completion contains ``<text>``, else 0.0
``regex:<pattern>``      1.0 when Python ``re.search(pattern, completion)`` matches, else 0.0
``length:<n>``           ``-|tokens - n| / n``: 0 at exactly ``n`` completion tokens, lower elsewhere
``accuracy``             1.0 when the row's ``solution`` column occurs in the completion
                         (whitespace- and case-insensitive), else 0.0 (ms-swift's ``accuracy``)
=======================  ====================================================================

A *reward model* is a sequence classifier with one label (``num_labels=1``), as an ``rm``
job produces; its score of the rendered prompt + completion is the reward
(Ouyang et al. 2022, arXiv:2203.02155).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

RewardFunc = Callable[..., list[float]]

BUILTIN_REWARDS = ("token_count:<id|text>", "contains:<text>", "regex:<pattern>", "length:<n>", "accuracy")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in completion)
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def _named(fn: RewardFunc, name: str) -> RewardFunc:
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


def make_reward_func(spec: str) -> RewardFunc:
    """Build a built-in reward function from its name (see the module docstring).

    Raises:
        InvalidArgument: unknown name or bad argument (reason ``BAD_REWARD_FUNC``).
    """
    name, _, arg = spec.partition(":")
    name = name.strip()

    def bad(msg: str) -> InvalidArgument:
        return InvalidArgument(
            f"reward function {spec!r}: {msg}; built-in reward functions are {', '.join(BUILTIN_REWARDS)}",
            reason="BAD_REWARD_FUNC",
            field_violations=[("spec.reward_funcs", msg)],
        )

    if name == "token_count":
        if not arg:
            raise bad("token_count needs a token id or text, e.g. token_count:42")
        if all(part.strip().isdigit() for part in arg.split(",")):
            tids = {int(part) for part in arg.split(",")}

            def token_count_id(prompts, completions, completion_ids=None, **_):
                if completion_ids is None:
                    raise ValueError("token_count:<id> needs completion_ids")
                return [float(sum(1 for t in ids if int(t) in tids)) for ids in completion_ids]

            return _named(token_count_id, "token_count")

        def token_count_text(prompts, completions, **_):
            return [float(completion_text(c).count(arg)) for c in completions]

        return _named(token_count_text, "token_count")
    if name == "contains":
        if not arg:
            raise bad("contains needs a text, e.g. contains:Paris")

        def contains(prompts, completions, **_):
            return [1.0 if arg in completion_text(c) else 0.0 for c in completions]

        return _named(contains, "contains")
    if name == "regex":
        try:
            pattern = re.compile(arg)
        except re.error as e:
            raise bad(f"invalid regular expression: {e}") from None

        def regex(prompts, completions, **_):
            return [1.0 if pattern.search(completion_text(c)) else 0.0 for c in completions]

        return _named(regex, "regex")
    if name == "length":
        try:
            target = int(arg)
            if target <= 0:
                raise ValueError
        except ValueError:
            raise bad("length needs a positive token count, e.g. length:64") from None

        def length(prompts, completions, completion_ids=None, **_):
            if completion_ids is None:
                return [-abs(len(completion_text(c).split()) - target) / target for c in completions]
            return [-abs(len(ids) - target) / target for ids in completion_ids]

        return _named(length, "length")
    if name == "accuracy":
        def norm(s: str) -> str:
            return " ".join(s.lower().split())

        def accuracy(prompts, completions, solution=None, **_):
            if solution is None:
                raise ValueError("the accuracy reward needs a 'solution' column in the dataset")
            return [1.0 if norm(str(sol)) and norm(str(sol)) in norm(completion_text(c)) else 0.0
                    for c, sol in zip(completions, solution)]

        return _named(accuracy, "accuracy")
    raise bad(f"unknown reward function {name!r}")


def make_reward_funcs(specs: Sequence[str]) -> list[RewardFunc]:
    """Build every named built-in reward function (see :func:`make_reward_func`)."""
    return [make_reward_func(s) for s in specs]


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model.

    The text is rendered the way the reward model was trained: conversational prompts through
    the reward model tokenizer's chat template (prompt messages + the assistant reply), plain
    text as ``prompt + completion``. Rewards are ``logits[:, 0]`` at the last token.

    Args:
        model: an ``AutoModelForSequenceClassification`` with ``num_labels == 1``.
        tokenizer: its tokenizer.
        max_length: truncate inputs to this many tokens (default 2048).
        batch_size: sequences per forward pass (default 8).
    """

    def __init__(self, model, tokenizer, *, max_length: int = 2048, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.__name__ = "reward_model"

    @classmethod
    def from_pretrained(cls, path: str, *, base: str | None = None, dtype=None, device=None, **kwargs) -> RewardModelScorer:
        """Load a reward model directory: a full sequence classifier, or a PEFT adapter of one
        (on ``base``, default the adapter's recorded base) merged for scoring."""
        model, tokenizer = load_reward_model(path, base=base, dtype=dtype)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, **kwargs)

    def render(self, prompt: Any, completion: Any) -> str:
        if isinstance(prompt, list):
            text = completion_text(completion)
            return self.tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": text}], tokenize=False
            )
        return f"{prompt}{completion_text(completion)}"

    def __call__(self, prompts, completions, **_) -> list[float]:
        import torch

        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        device = next(self.model.parameters()).device
        out: list[float] = []
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                    max_length=self.max_length, add_special_tokens=False,
                ).to(device)
                with torch.no_grad():
                    logits = self.model(**enc).logits
                out.extend(logits[:, 0].float().tolist())
        finally:
            self.tokenizer.padding_side = padding_side
        return out


def load_reward_model(path: str, *, base: str | None = None, dtype=None):
    """``(model, tokenizer)`` of a reward model: ``AutoModelForSequenceClassification`` with one
    label, frozen, in eval mode. A PEFT adapter (an ``rm`` job's output) is merged into ``base``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .models import is_adapter_dir, read_adapter_base

    dtype = dtype or torch.float32
    if is_adapter_dir(path):
        from peft import PeftModel

        base = base or read_adapter_base(path)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        tok_dir = path if _has_tokenizer(path) else base
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        tok_dir = path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return model, tokenizer


def _has_tokenizer(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    return (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists()
