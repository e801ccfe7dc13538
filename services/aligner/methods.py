"""Building the trainer of each alignment method from an :class:`AlignmentConfig`.

=========  ======================================================  ===========================
rlhf_type  trainer                                                 paper
=========  ======================================================  ===========================
dpo        ``trl.DPOTrainer`` (loss types, beta, label smoothing,  Rafailov et al. 2023,
           RPO as the "sft" loss added with weight ``rpo_alpha``)  arXiv:2305.18290
kto        ``trl.KTOTrainer``                                      Ethayarajh et al. 2024,
                                                                   arXiv:2402.01306
orpo       ``trl.experimental.orpo.ORPOTrainer``                   Hong et al. 2024, arXiv:2403.07691
cpo        ``trl.experimental.cpo.CPOTrainer``                     Xu et al. 2024, arXiv:2401.08417
simpo      ``CPOTrainer`` with ``loss_type="simpo"``, cpo_alpha 0  Meng et al. 2024, arXiv:2405.14734
rm         ``trl.RewardTrainer`` on a 1-label sequence classifier  Ouyang et al. 2022, arXiv:2203.02155
ppo        :class:`~swiftmesh.services.aligner.ppo.PPOTrainer`     Schulman et al. 2017,
                                                                   arXiv:1707.06347
grpo       ``trl.GRPOTrainer``                                     Shao et al. 2024, arXiv:2402.03300
=========  ======================================================  ===========================

Reference models follow :mod:`swiftmesh.services.aligner.models`: with PEFT the policy with
its adapter disabled (a frozen ``"ref"`` copy of the adapter when training continues from an
SFT adapter); with full fine-tuning a frozen copy, sharded by DeepSpeed under ZeRO-3.

Every trainer returned is a ``transformers.Trainer``: ``train(resume_from_checkpoint=...)``,
callbacks, ``checkpoint-N`` directories, ``report_to`` (TensorBoard) all work the usual way,
which is what the shared job machinery drives. Metrics carry TRL's names
(``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen``, ``logps/rejected``, ``kl``; PPO: ``objective/scores``, ``objective/kl``,
``loss/value_avg``, ``policy/clipfrac_avg`` ...; GRPO: ``reward``, ``kl``, ``clip_ratio/...``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from swiftmesh.jobkit.data import AlignmentData, load_alignment_data
from swiftmesh.jobkit.settings import Tuner
from swiftmesh.runtime.errors import InvalidArgument

from .config import AlignmentConfig
from .models import (
    is_adapter_dir,
    load_adapter_trainable,
    load_causal_lm,
    load_tokenizer,
    merge_adapter_into,
    peft_config,
    quantization_config,
    save_policy,
)

log = logging.getLogger("swiftmesh.aligner")


# --------------------------------------------------------------------------- prompts


def _prompt_len(tokenizer, prompt) -> int:
    if isinstance(prompt, list):
        return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _cut_text_left(tokenizer, text: str, keep_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep_tokens:
        return text
    return tokenizer.decode(ids[-keep_tokens:] if keep_tokens > 0 else [])


def truncate_prompt(tokenizer, prompt, max_prompt_length: int):
    """Shorten a prompt to at most ``max_prompt_length`` tokens, keeping its end.

    Plain text loses tokens from the start. Conversations lose their oldest turns first (the
    system message stays), then the start of the oldest remaining message.
    """
    n = _prompt_len(tokenizer, prompt)
    if n <= max_prompt_length:
        return prompt
    if not isinstance(prompt, list):
        return _cut_text_left(tokenizer, prompt, max_prompt_length)
    msgs = list(prompt)
    system = [m for m in msgs[:1] if m["role"] == "system"]
    rest = msgs[len(system):]
    while len(rest) > 1 and _prompt_len(tokenizer, system + rest) > max_prompt_length:
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest = rest[1:]
    excess = _prompt_len(tokenizer, system + rest) - max_prompt_length
    if excess > 0 and isinstance(rest[0]["content"], str):
        content = rest[0]["content"]
        keep = max(len(tokenizer(content, add_special_tokens=False)["input_ids"]) - excess, 0)
        rest = [{**rest[0], "content": _cut_text_left(tokenizer, content, keep)}, *rest[1:]]
    return system + rest


def truncate_prompts(data: AlignmentData, tokenizer, max_prompt_length: int) -> int:
    """Truncate every prompt of ``data`` in place; returns how many were shortened."""
    changed = 0
    for row in data.rows:
        new = truncate_prompt(tokenizer, row["prompt"], max_prompt_length)
        if new is not row["prompt"]:
            row["prompt"] = new
            changed += 1
    return changed


# --------------------------------------------------------------------------- arguments


def _bf16(cfg: AlignmentConfig) -> bool:
    import torch

    if cfg.training.bf16 is not None:
        return cfg.training.bf16
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def training_kwargs(cfg: AlignmentConfig, *, has_eval: bool) -> dict[str, Any]:
    """``TrainingArguments`` keyword arguments from the job's settings (our defaults)."""
    import torch

    t = cfg.training
    if cfg.hf_args is not None:
        # The job machinery's arguments (jobkit.hf.training_arguments_kwargs: DeepSpeed config,
        # DDP backend, checkpoint cadence, tokens/s accounting).
        kw = dict(cfg.hf_args)
        kw.update(cfg.extra_args)
        return kw
    lr = t.learning_rate or (1e-4 if cfg.is_peft else 1e-5)
    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        num_train_epochs=t.num_train_epochs or 1.0,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        learning_rate=lr,
        lr_scheduler_type=t.lr_scheduler_type or "cosine",
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        bf16=_bf16(cfg),
        fp16=False,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps or 1,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit or None,
        report_to=list(cfg.report_to) or "none",
        deepspeed=cfg.deepspeed,
        # HF Trainer only engages DeepSpeed with use_cpu=False (also on CPU).
        use_cpu=not torch.cuda.is_available() and cfg.deepspeed is None,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if has_eval:
        kw["eval_strategy"] = "steps" if t.eval_steps > 0 else "epoch"
        if t.eval_steps > 0:
            kw["eval_steps"] = t.eval_steps
    kw.update(cfg.extra_args)
    return kw


def _method_args(cfg: AlignmentConfig, kw: dict[str, Any]):
    m = cfg.rlhf_type
    t = cfg.training
    if m == "dpo":
        from trl import DPOConfig

        loss_type = list(cfg.dpo.loss_type) or ["sigmoid"]
        loss_weights = None
        if cfg.dpo.rpo_alpha:
            loss_weights = [1.0] * len(loss_type) + [cfg.dpo.rpo_alpha]
            loss_type = loss_type + ["sft"]
        return DPOConfig(**kw, loss_type=loss_type, loss_weights=loss_weights, beta=cfg.dpo.beta,
                         label_smoothing=cfg.dpo.label_smoothing, max_length=t.max_length)
    if m == "kto":
        from trl import KTOConfig

        return KTOConfig(**kw, beta=cfg.kto.beta, desirable_weight=cfg.kto.desirable_weight,
                         undesirable_weight=cfg.kto.undesirable_weight, max_length=t.max_length)
    if m == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**kw, beta=cfg.cpo.beta if cfg.cpo.beta is not None else 0.1, max_length=t.max_length)
    if m in ("cpo", "simpo"):
        from trl.experimental.cpo import CPOConfig

        simpo = m == "simpo"
        return CPOConfig(
            **kw,
            beta=cfg.cpo.beta if cfg.cpo.beta is not None else (2.0 if simpo else 0.1),
            loss_type="simpo" if simpo else (cfg.cpo.loss_type or "sigmoid"),
            simpo_gamma=cfg.cpo.simpo_gamma,
            cpo_alpha=cfg.cpo.cpo_alpha if cfg.cpo.cpo_alpha is not None else (0.0 if simpo else 1.0),
            label_smoothing=cfg.cpo.label_smoothing,
            max_length=t.max_length,
        )
    if m == "rm":
        from trl import RewardConfig

        return RewardConfig(**kw, center_rewards_coefficient=cfg.rm.center_rewards_coefficient,
                            max_length=t.max_length)
    if m == "grpo":
        from trl import GRPOConfig

        g = cfg.grpo
        return GRPOConfig(
            **kw, num_generations=g.num_generations, beta=g.beta, max_completion_length=g.max_completion_length,
            temperature=g.temperature, epsilon=g.epsilon, loss_type=g.loss_type,
        )
    if m == "ppo":
        from .ppo import PPOConfig

        p = cfg.ppo
        if p.total_updates > 0:
            kw["max_steps"] = p.total_updates
        return PPOConfig(
            **kw, rollout_batch_size=p.rollout_batch_size, num_ppo_epochs=p.num_ppo_epochs,
            num_mini_batches=p.num_mini_batches, kl_coef=p.kl_coef, cliprange=p.cliprange,
            cliprange_value=p.cliprange_value, vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam,
            response_length=p.response_length, temperature=p.temperature,
            missing_eos_penalty=p.missing_eos_penalty, max_prompt_length=cfg.max_prompt_length,
        )
    raise InvalidArgument(f"unknown rlhf_type {m!r}", reason="BAD_RLHF_TYPE")


# --------------------------------------------------------------------------- models


def _policy(cfg: AlignmentConfig, *, bf16: bool, seq_cls: bool = False):
    """(model, peft_config_for_trl) for the method: a fresh adapter goes to TRL as peft_config
    (reference = adapter disabled); an existing adapter is loaded trainable (TRL adds the
    frozen "ref" copy); full fine-tuning from an adapter merges it first."""
    import torch

    dtype = torch.float32
    base = cfg.model
    adapter = cfg.adapter
    if adapter and not is_adapter_dir(adapter):
        raise InvalidArgument(f"{adapter} is not a PEFT adapter (no adapter_config.json)", reason="BAD_ADAPTER",
                              field_violations=[("spec.model", "not an adapter")])
    if adapter and (not cfg.is_peft or seq_cls):
        # Full fine-tuning (or a reward model) from an adapter: train the merged SFT model.
        base = str(merge_adapter_into(cfg.model, adapter, Path(cfg.output_dir) / "start-merged", dtype=dtype))
        adapter = None
    if seq_cls:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, dtype=dtype, quantization_config=quantization_config(cfg.tuner, bf16))
        return model, (peft_config(cfg.tuner, cfg.lora, task_type="SEQ_CLS") if cfg.is_peft else None), base
    model = load_causal_lm(base, dtype=dtype, quantization=quantization_config(cfg.tuner, bf16))
    if cfg.is_peft and adapter:
        if cfg.tuner == Tuner.QLORA:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
        return load_adapter_trainable(model, adapter), None, base
    if cfg.is_peft:
        if cfg.tuner == Tuner.QLORA:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.training.gradient_checkpointing)
        return model, peft_config(cfg.tuner, cfg.lora), base
    return model, None, base


def _ref_model(cfg: AlignmentConfig, policy_source: str):
    """An explicit reference model for full fine-tuning, or None (TRL builds a frozen copy of
    the policy from ``policy_source`` itself, sharded under ZeRO-3)."""
    if cfg.is_peft:
        return None
    if cfg.ref_model:
        return load_causal_lm(cfg.ref_model)
    return None


def _split(data: AlignmentData, ratio: float, seed: int):
    ds = data.to_dataset()
    if not ratio:
        return ds, None
    n_eval = max(1, int(round(len(ds) * ratio)))
    if n_eval >= len(ds):
        raise InvalidArgument(f"split_dataset_ratio {ratio} leaves no training rows ({len(ds)} rows)",
                              reason="BAD_SPLIT", field_violations=[("spec.args.split_dataset_ratio", "too large")])
    parts = ds.train_test_split(test_size=n_eval, seed=seed)
    return parts["train"], parts["test"]


def build_trainer(cfg: AlignmentConfig, data: AlignmentData | None = None, *, callbacks=None,
                  eval_data: AlignmentData | None = None, prompts_truncated: bool = False):
    """Build the TRL (or our PPO) trainer of the job, ready for ``train()``.

    Args:
        cfg: the job; ``cfg.model`` etc. are local directories.
        data: the converted training data (default: loaded from ``cfg.datasets``).
        callbacks: ``transformers.TrainerCallback`` objects (events, cancel, ...).
        eval_data: evaluation data; default: ``training.split_dataset_ratio`` of ``data``.
        prompts_truncated: the prompts are already cut to ``max_prompt_length`` (the service
            does it before the job starts).

    Raises:
        InvalidArgument: a bad setting or dataset (see :func:`data.load_alignment_data`).
    """
    cfg.validate()
    m = cfg.rlhf_type
    if data is None:
        data = load_alignment_data(cfg.datasets, m, seed=cfg.training.seed, ignore_columns=cfg.ignore_columns)
    if data.method != m:
        data = AlignmentData(m, data.rows, data.style, data.formats)
    bf16 = _bf16(cfg)
    padding_side = "left" if m in ("grpo", "ppo") else None
    tokenizer = load_tokenizer(cfg.adapter or cfg.model, None, cfg.chat_template, padding_side) \
        if cfg.adapter and not is_adapter_dir(cfg.adapter) else \
        load_tokenizer(cfg.model, cfg.adapter, cfg.chat_template, padding_side)
    if data.style == "conversational" and not tokenizer.chat_template:
        raise InvalidArgument(
            "the dataset is conversational (lists of messages) but the model's tokenizer has no chat template; "
            "set spec.chat_template or use plain-text rows",
            reason="NO_CHAT_TEMPLATE", field_violations=[("spec.chat_template", "required for messages")],
        )
    if not prompts_truncated:
        truncate_prompts(data, tokenizer, cfg.max_prompt_length)
    if eval_data is not None:
        if not prompts_truncated:
            truncate_prompts(eval_data, tokenizer, cfg.max_prompt_length)
        train_ds, eval_ds = data.to_dataset(), eval_data.to_dataset()
    else:
        train_ds, eval_ds = _split(data, cfg.training.split_dataset_ratio, cfg.training.seed)
    if m == "rm" and not cfg.rm.use_margin and "margin" in train_ds.column_names:
        train_ds = train_ds.remove_columns("margin")
        if eval_ds is not None and "margin" in eval_ds.column_names:
            eval_ds = eval_ds.remove_columns("margin")
    kw = training_kwargs(cfg, has_eval=eval_ds is not None)
    args = _method_args(cfg, kw)
    common = dict(args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                  callbacks=list(callbacks or []))

    if m == "ppo":
        return _build_ppo(cfg, args, tokenizer, train_ds, eval_ds, callbacks, bf16)

    model, peft_cfg, source = _policy(cfg, bf16=bf16, seq_cls=(m == "rm"))
    if peft_cfg is not None:
        common["peft_config"] = peft_cfg

    if m == "dpo":
        from trl import DPOTrainer as cls

        common["ref_model"] = _ref_model(cfg, source)
    elif m == "kto":
        from trl import KTOTrainer as cls

        common["ref_model"] = _ref_model(cfg, source)
    elif m == "orpo":
        from trl.experimental.orpo import ORPOTrainer as cls
    elif m in ("cpo", "simpo"):
        from trl.experimental.cpo import CPOTrainer as cls
    elif m == "rm":
        from trl import RewardTrainer as cls

        model.config.pad_token_id = tokenizer.pad_token_id
    elif m == "grpo":
        from trl import GRPOTrainer as cls

        common["reward_funcs"], reward_classes = _grpo_rewards(cfg)
        if reward_classes is not None:
            common["reward_processing_classes"] = reward_classes
    else:  # pragma: no cover - validate() guards
        raise InvalidArgument(f"unknown rlhf_type {m!r}")
    if cfg.tuner == Tuner.LORA_PLUS:
        from swiftmesh.jobkit.hf import with_loraplus

        cls = with_loraplus(cls, cfg.lora.lora_plus_lr_ratio)
    log.info("building %s for %s: %s", cls.__name__, m, data.summary())
    return cls(model=model, **common)


def _grpo_rewards(cfg: AlignmentConfig) -> tuple[list, list | None]:
    """GRPO's reward functions (built-ins, then the reward model) and their processing classes."""
    from .rewards import load_reward_model, make_reward_funcs

    funcs: list = make_reward_funcs(cfg.grpo.reward_funcs)
    classes: list = [None] * len(funcs)
    if cfg.grpo.reward_model:
        model, tok = load_reward_model(cfg.grpo.reward_model, base=cfg.grpo.reward_model_base)
        funcs.append(model)
        classes.append(tok)
    return funcs, (classes if cfg.grpo.reward_model else None)


def _build_ppo(cfg: AlignmentConfig, args, tokenizer, train_ds, eval_ds, callbacks, bf16: bool):
    from .ppo import PPOTrainer
    from .rewards import RewardModelScorer, make_reward_funcs

    rewards: list = make_reward_funcs(cfg.ppo.reward_funcs)
    if cfg.ppo.reward_model:
        rewards.append(RewardModelScorer.from_pretrained(cfg.ppo.reward_model, base=cfg.ppo.reward_model_base))
    model, peft_cfg, source = _policy(cfg, bf16=bf16)
    ref = _ref_model(cfg, source)
    return PPOTrainer(
        args=args, processing_class=tokenizer, model=model, ref_model=ref, reward_funcs=rewards,
        train_dataset=train_ds, eval_dataset=eval_ds, peft_config=peft_cfg, callbacks=list(callbacks or []),
    )


def save_result(trainer, out_dir: str | Path) -> str:
    """Save the trained policy (or reward model) for the hub: the ``"default"`` adapter only
    (never TRL's frozen ``"ref"`` copy) or the full model, plus the tokenizer. Call it on every
    worker (DeepSpeed gathers ZeRO-3 shards collectively); only the main process writes.
    Returns ``"adapter"`` or ``"full"``."""
    import shutil

    if hasattr(trainer, "save_policy"):
        return trainer.save_policy(out_dir)
    from .ppo.model import is_peft

    model = trainer.accelerator.unwrap_model(trainer.model)
    kind = "adapter" if is_peft(model) else "full"
    if getattr(trainer, "is_deepspeed_enabled", False):
        # ZeRO shards the weights: the Trainer gathers them (collective), then drop the "ref" copy
        # and the pickled training arguments (a model directory holds no pickles).
        trainer.save_model(str(out_dir))
        if trainer.args.should_save:
            ref = Path(out_dir) / "ref"
            if (ref / "adapter_config.json").exists():
                shutil.rmtree(ref)
            (Path(out_dir) / "training_args.bin").unlink(missing_ok=True)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(str(out_dir))
        return kind
    if trainer.args.should_save:
        save_policy(model, trainer.processing_class, out_dir)
    return kind
