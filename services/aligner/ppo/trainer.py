"""``PPOTrainer``: PPO for RLHF, written in the style of TRL's trainers.

The algorithm is the one of Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155) as reproduced
in "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031),
which was the basis of TRL's former ``PPOTrainer`` (removed from TRL in 1.13). Each update:

1. **Rollout**: sample ``rollout_batch_size`` prompts and generate responses with the policy
   (temperature ``temperature``, at most ``response_length`` tokens); tokens after the first
   EOS are padding and masked out everywhere.
2. **Score**: the reward model (a sequence classifier) and/or built-in reward functions score
   each (prompt, response); ``missing_eos_penalty`` is subtracted when no EOS was produced.
3. **Evaluate** with the rollout policy: per-token log-probabilities (temperature-scaled),
   values from the value head, and the reference policy's log-probabilities.
4. **Rewards**: per-token ``-kl_coef * KL(pi || pi_ref)`` plus the score on the last token;
   **advantages** by GAE (Schulman et al. 2016, arXiv:1506.02438), whitened.
5. **Optimise** ``num_ppo_epochs`` times over ``num_mini_batches`` minibatches: the clipped
   policy loss plus ``vf_coef`` times the clipped value loss (Schulman et al. 2017,
   arXiv:1707.06347).

Model layout: the policy is a causal LM (optionally a PEFT model) with a **value head**, a
linear layer on the last hidden state of the same trunk (TRL's ``ValueHead`` design), so one
forward pass gives logits and values. The **reference policy** is the policy with its
adapter disabled (PEFT, new adapter), a frozen copy of the starting adapter (PEFT, continuing
an SFT adapter), or a frozen copy of the whole model (full fine-tuning). Dropout is disabled
in all of them (N+ detail).

It is a ``transformers.Trainer``: callbacks (``on_step_end``, ``on_log``, ``on_save``...),
``report_to`` (TensorBoard), ``checkpoint-N`` directories with optimizer, scheduler, RNG and
``trainer_state.json``, and ``train(resume_from_checkpoint=...)`` work as usual; a resumed
run replays the same prompt order (the order is a function of the seed and the update number).
Distribution: one process or DDP; DeepSpeed is not supported (raises ``ValueError``).

Metrics (TRL's former PPO names): ``objective/scores`` (mean reward), ``objective/kl``
(sequence KL to the reference), ``objective/entropy``, ``objective/non_score_reward``,
``objective/rlhf_reward``, ``policy/approxkl_avg``, ``policy/clipfrac_avg``,
``loss/policy_avg``, ``loss/value_avg``, ``val/clipfrac_avg``, ``policy/entropy_avg``,
``val/ratio``, ``val/ratio_var``, ``val/num_eos_tokens``, ``lr``, ``episode``, ``eps``; plus
GRPO-style ``reward``, ``reward_std``, ``rewards/<func>/mean``, ``kl``, ``loss`` and
``completions/mean_length``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, Trainer, TrainerState
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from . import core
from .config import PPOConfig
from .model import VALUE_HEAD_FILE, PolicyAndValue, is_peft
from .rollout import RolloutMixin


class PPOTrainer(RolloutMixin, Trainer):
    """PPO for RLHF (see the module docstring).

    Args:
        args: a :class:`PPOConfig`.
        processing_class: the policy's tokenizer (its chat template renders conversational prompts).
        model: the policy, a causal LM or a ``peft.PeftModel`` whose ``"default"`` adapter continues
            training (its frozen copy becomes the reference).
        ref_model: reference policy for full fine-tuning (default: a frozen copy of ``model``);
            ignored with PEFT.
        reward_funcs: reward functions (``rewards.make_reward_func``) and/or
            ``rewards.RewardModelScorer`` objects; their scores are summed.
        train_dataset: a ``datasets.Dataset`` with a ``prompt`` column (text or messages); other
            columns are passed to reward functions.
        eval_dataset: optional prompts for :meth:`evaluate` (mean reward of sampled responses).
        peft_config: a ``peft.PeftConfig`` to wrap ``model`` with a new adapter (reference =
            adapter disabled).
        callbacks: ``transformers.TrainerCallback`` objects.
        optimizers: ``(optimizer, lr_scheduler)`` as for ``Trainer``.

    Raises:
        ValueError: no reward function; DeepSpeed configured; a prompt-less dataset.
    """

    _tag_names = ["trl", "ppo", "swiftmesh"]

    def __init__(
        self,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: nn.Module,
        reward_funcs: Sequence[Callable[..., list[float]]],
        train_dataset,
        ref_model: nn.Module | None = None,
        eval_dataset=None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ) -> None:
        if not isinstance(args, PPOConfig):
            raise TypeError("args must be a PPOConfig")
        if args.deepspeed:
            raise ValueError("PPOTrainer runs on one process or under DDP; DeepSpeed ZeRO is not supported for PPO")
        if not reward_funcs:
            raise ValueError("PPOTrainer needs at least one reward function or reward model")
        if "prompt" not in train_dataset.column_names:
            raise ValueError("the PPO dataset needs a 'prompt' column")
        tok = processing_class
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        self.reward_funcs = list(reward_funcs)

        # Policy, reference, value head ----------------------------------------------------
        from trl.trainer.utils import disable_dropout_in_model

        torch.manual_seed(args.seed)
        self.ref_adapter: str | None = None
        if peft_config is not None:
            from peft import get_peft_model

            if is_peft(model):
                raise ValueError("pass either a PeftModel or a peft_config, not both")
            model = get_peft_model(model, peft_config)
        elif is_peft(model):
            from ..models import add_reference_adapter

            add_reference_adapter(model, "ref")
            self.ref_adapter = "ref"
        self.is_peft = is_peft(model)
        if self.is_peft:
            ref_model = None
        elif ref_model is None:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            disable_dropout_in_model(ref_model)
        disable_dropout_in_model(model)
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        hidden = text_cfg.hidden_size
        value_head = nn.Linear(hidden, 1)
        std = args.value_head_init_std if args.value_head_init_std is not None else 1.0 / math.sqrt(hidden + 1)
        nn.init.normal_(value_head.weight, std=std)
        nn.init.zeros_(value_head.bias)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.is_peft:
                model.enable_input_require_grads()
        wrapper = PolicyAndValue(model, value_head)

        # Prompts ---------------------------------------------------------------------------
        self._prompts = list(train_dataset["prompt"])
        self._columns = {c: list(train_dataset[c]) for c in train_dataset.column_names if c != "prompt"}
        self._query_ids = [self._tokenize_prompt(tok, p, args.max_prompt_length) for p in self._prompts]
        self._perm_cache: dict[int, list[int]] = {}

        super().__init__(
            model=wrapper,
            args=args,
            processing_class=tok,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.ref_model = ref_model.to(self.accelerator.device) if ref_model is not None else None
        for f in self.reward_funcs:
            if hasattr(f, "model"):
                f.model.to(self.accelerator.device)
        stops = list(args.stop_token_ids or [])
        if not stops:
            eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
            stops = [tok.eos_token_id] + (eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_token_ids = sorted({int(s) for s in stops if s is not None})
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _tokenize_prompt(tok, prompt, max_prompt_length: int) -> list[int]:
        if isinstance(prompt, list):
            ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        else:
            ids = tok(prompt, add_special_tokens=True)["input_ids"]
        ids = list(ids)
        return ids[-max_prompt_length:] if max_prompt_length else ids

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.args.seed + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self._query_ids), generator=g).tolist()}
        return self._perm_cache[epoch]

    def batch_indices(self, update: int) -> list[int]:
        """Prompt indices this process uses at ``update``: a seeded shuffle per pass over the
        data, cut into consecutive slices (so a resumed run sees the same prompts)."""
        n = len(self._query_ids)
        B = self.args.rollout_batch_size
        world = self.accelerator.num_processes
        per_update = B * world
        pos = update * per_update
        idx: list[int] = []
        while len(idx) < per_update:
            epoch, off = divmod(pos, n)
            take = min(n - off, per_update - len(idx))
            idx.extend(self._perm(epoch)[off : off + take])
            pos += take
        rank = self.accelerator.process_index
        return idx[rank * B : (rank + 1) * B]

    def num_updates(self) -> int:
        """Total PPO updates of the run: ``max_steps``, else from ``total_episodes``, else epochs."""
        per_update = self.args.rollout_batch_size * self.accelerator.num_processes
        if self.args.max_steps and self.args.max_steps > 0:
            return int(self.args.max_steps)
        if self.args.total_episodes:
            return max(1, math.ceil(self.args.total_episodes / per_update))
        return max(1, math.ceil(self.args.num_train_epochs * len(self._query_ids) / per_update))

    # ------------------------------------------------------------------ optimisation
    def ppo_epochs(self, batch: dict[str, Any]) -> dict[str, float]:
        """Step 5: ``num_ppo_epochs`` passes of clipped policy + value loss over the rollouts."""
        args = self.args
        model = self.model_wrapped
        model.train()
        B = batch["responses"].size(0)
        mini = B // args.num_mini_batches
        micro = min(args.per_device_train_batch_size, mini)
        accum = mini // micro
        ctx = batch["context_length"]
        temp = args.temperature + 1e-7
        stats = defaultdict(list)
        g = torch.Generator().manual_seed(args.seed * 100003 + self.state.global_step)
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(B, generator=g).to(batch["responses"].device)
            for m0 in range(0, B, mini):
                mb_idx = order[m0:m0 + mini]
                for u0 in range(0, mini, micro):
                    idx = mb_idx[u0:u0 + micro]
                    sync = contextlib.nullcontext() if u0 + micro >= mini else self.accelerator.no_sync(model)
                    with sync, self.accelerator.autocast():
                        logits, vpred = model(batch["query_responses"][idx], batch["attention_mask"][idx])
                        logits = logits[:, ctx - 1:-1] / temp
                        new_logprobs = core.logprobs_from_logits(logits, batch["responses"][idx])
                        vpred = vpred[:, ctx - 1:-1].float()
                        m = batch["mask"][idx]
                        pg_loss, pg_stats = core.policy_loss(new_logprobs, batch["logprobs"][idx],
                                                             batch["advantages"][idx], m, args.cliprange)
                        vf_loss, vf_stats = core.value_loss(vpred, batch["values"][idx], batch["returns"][idx], m,
                                                            args.cliprange_value)
                        loss = pg_loss + args.vf_coef * vf_loss
                        self.accelerator.backward(loss / accum)
                    with torch.no_grad():
                        stats["loss"].append(loss.detach())
                        stats["pg_loss"].append(pg_loss.detach())
                        stats["vf_loss"].append(vf_loss.detach())
                        stats["pg_clipfrac"].append(pg_stats["clipfrac"])
                        stats["vf_clipfrac"].append(vf_stats["clipfrac"])
                        stats["approxkl"].append(pg_stats["approxkl"])
                        stats["ratio"].append(pg_stats["ratio"])
                        stats["entropy"].append(core.masked_mean(core.entropy_from_logits(logits.detach()), m))
                    del logits
                if args.max_grad_norm and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        out = {}
        for k, v in stats.items():
            t = self.accelerator.gather_for_metrics(torch.stack(v).float().reshape(-1))
            out[k] = t.mean().item()
            if k == "ratio":
                out["ratio_var"] = t.var().item() if t.numel() > 1 else 0.0
        return out

    # ------------------------------------------------------------------ training loop
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs) -> TrainOutput:
        """Run PPO for :meth:`num_updates` updates (or resume from a ``checkpoint-N`` directory;
        ``True``: the latest one in ``output_dir``)."""
        args = self.args
        acc = self.accelerator
        total = self.num_updates()
        if self.optimizer is None:
            self.create_optimizer()
        if self.lr_scheduler is None:
            self.create_scheduler(num_training_steps=total, optimizer=self.optimizer)
        self.model_wrapped, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.state = TrainerState(
            stateful_callbacks=[cb for cb in self.callback_handler.callbacks + [self.control]
                                if isinstance(cb, ExportableState)]
        )
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        self.state.max_steps = total
        per_update = args.rollout_batch_size * acc.num_processes
        updates_per_epoch = max(1, math.ceil(len(self._query_ids) / per_update))
        self.state.num_train_epochs = math.ceil(total / updates_per_epoch)
        self.state.logging_steps = args.logging_steps
        self.state.save_steps = args.save_steps
        self.state.eval_steps = args.eval_steps
        self.state.train_batch_size = args.rollout_batch_size

        if resume_from_checkpoint:
            ckpt = resume_from_checkpoint
            if ckpt is True:
                ckpt = get_last_checkpoint(args.output_dir)
                if ckpt is None:
                    raise ValueError(f"no checkpoint found in {args.output_dir}")
            self._load_checkpoint(str(ckpt))
            self.state.max_steps = total

        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        start = time.time()
        start_step = self.state.global_step
        losses = []
        if start_step == 0:
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        for update in range(start_step, total):
            if self.control.should_training_stop:
                break
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            batch = self.rollout(self.batch_indices(update))
            train_stats = self.ppo_epochs(batch)
            self.lr_scheduler.step()
            self.state.global_step += 1
            # Tokens of the rollouts (prompt + response, no padding), all workers: tokens/s.
            self.state.num_input_tokens_seen += int(
                acc.gather_for_metrics(batch["attention_mask"].sum().reshape(1)).sum().item())
            self.state.epoch = self.state.global_step / updates_per_epoch
            metrics = self._update_metrics(batch, train_stats, time.time() - start, start_step)
            losses.append(train_stats["loss"])
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log(metrics)
            if self.control.should_evaluate and self.eval_dataset is not None:
                self.evaluate()
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.state.global_step % updates_per_epoch == 0:
                self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
                if self.state.global_step < total and not self.control.should_training_stop:
                    self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        train_loss = float(sum(losses) / len(losses)) if losses else 0.0
        runtime = time.time() - start
        return TrainOutput(self.state.global_step, train_loss,
                           {"train_runtime": runtime, "train_loss": train_loss,
                            "train_steps_per_second": (self.state.global_step - start_step) / max(runtime, 1e-9)})

    def _update_metrics(self, batch: dict[str, Any], st: dict[str, float], elapsed: float, start_step: int) -> dict[str, float]:
        acc = self.accelerator

        def g(t: torch.Tensor) -> torch.Tensor:
            return acc.gather_for_metrics(t.reshape(-1).float())

        scores = g(batch["raw_scores"])
        kl_seq = g(batch["kl"].sum(1))
        non_score = g(batch["non_score"].sum(1))
        entropy_seq = g((-batch["logprobs"] * batch["mask"]).sum(1))
        episodes = self.state.global_step * self.args.rollout_batch_size * acc.num_processes
        done = (self.state.global_step - start_step) * self.args.rollout_batch_size * acc.num_processes
        metrics = {
            "objective/kl": kl_seq.mean().item(),
            "objective/entropy": entropy_seq.mean().item(),
            "objective/non_score_reward": non_score.mean().item(),
            "objective/rlhf_reward": (g(batch["scores"]) + non_score).mean().item(),
            "objective/scores": scores.mean().item(),
            "policy/approxkl_avg": st["approxkl"],
            "policy/clipfrac_avg": st["pg_clipfrac"],
            "loss/policy_avg": st["pg_loss"],
            "loss/value_avg": st["vf_loss"],
            "val/clipfrac_avg": st["vf_clipfrac"],
            "policy/entropy_avg": st["entropy"],
            "val/ratio": st["ratio"],
            "val/ratio_var": st["ratio_var"],
            "val/num_eos_tokens": g(batch["has_eos"].float()).sum().item(),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "episode": float(episodes),
            "eps": done / max(elapsed, 1e-9),
            "loss": st["loss"],
            "reward": scores.mean().item(),
            "reward_std": scores.std().item() if scores.numel() > 1 else 0.0,
            "kl": kl_seq.mean().item(),
            "completions/mean_length": g(batch["lengths"].float()).mean().item(),
        }
        metrics.update(batch["per_func"])
        return metrics

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean reward (and KL) of sampled responses to the evaluation prompts."""
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            return {}
        saved = (self._prompts, self._columns, self._query_ids)
        try:
            self._prompts = list(ds["prompt"])
            self._columns = {c: list(ds[c]) for c in ds.column_names if c != "prompt"}
            self._query_ids = [self._tokenize_prompt(self.processing_class, p, self.args.max_prompt_length)
                               for p in self._prompts]
            scores, kls = [], []
            B = self.args.rollout_batch_size
            for s in range(0, len(self._prompts), B):
                batch = self.rollout(list(range(s, min(s + B, len(self._prompts)))))
                scores.append(batch["raw_scores"].float())
                kls.append(batch["kl"].sum(1).float())
        finally:
            self._prompts, self._columns, self._query_ids = saved
        sc = self.accelerator.gather_for_metrics(torch.cat(scores))
        kl = self.accelerator.gather_for_metrics(torch.cat(kls))
        metrics = {f"{metric_key_prefix}_reward": sc.mean().item(), f"{metric_key_prefix}_objective/kl": kl.mean().item()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (adapter ``"default"`` or full model), the value head
        (``value_head.safetensors``) and the tokenizer to ``output_dir``."""
        self.save_policy(output_dir or self.args.output_dir)

    def save_policy(self, output_dir: str | os.PathLike) -> str:
        """As :meth:`save_model`; returns ``"adapter"`` or ``"full"``."""
        from safetensors.torch import save_file

        from ..models import save_policy

        unwrapped = self.accelerator.unwrap_model(self.model)
        kind = "adapter" if self.is_peft else "full"
        if not self.args.should_save:
            return kind
        out = Path(output_dir)
        save_policy(unwrapped.policy, self.processing_class, out)
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.value_head.state_dict().items()},
                  str(out / VALUE_HEAD_FILE))
        return kind

    def _load_checkpoint(self, ckpt: str) -> None:
        """Restore policy weights, value head, optimizer, scheduler, RNG and trainer state."""
        from safetensors.torch import load_file

        p = Path(ckpt)
        unwrapped = self.accelerator.unwrap_model(self.model)
        policy = unwrapped.policy
        dev = self.accelerator.device
        if self.is_peft:
            from peft import set_peft_model_state_dict

            files = list(p.glob("adapter_model.safetensors"))
            if not files:
                raise ValueError(f"{ckpt} holds no adapter_model.safetensors")
            set_peft_model_state_dict(policy, load_file(str(files[0]), device=str(dev)), adapter_name="default")
        else:
            index = p / "model.safetensors.index.json"
            shards = sorted({p / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.exists() \
                else [p / "model.safetensors"]
            sd: dict[str, torch.Tensor] = {}
            for s in shards:
                sd.update(load_file(str(s), device=str(dev)))
            missing, unexpected = policy.load_state_dict(sd, strict=False)
            tied = set(getattr(policy, "_tied_weights_keys", None) or [])
            really_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
            if really_missing or unexpected:
                raise ValueError(f"checkpoint {ckpt} does not match the model: missing {really_missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
        unwrapped.value_head.load_state_dict(load_file(str(p / VALUE_HEAD_FILE), device=str(dev)))
        self._load_optimizer_and_scheduler(ckpt)
        self._load_rng_state(ckpt)
        state = TrainerState.load_from_json(str(p / "trainer_state.json"))
        self.state.global_step = state.global_step
        self.state.epoch = state.epoch
        self.state.log_history = state.log_history
        self.state.total_flos = state.total_flos
        self.state.best_global_step = state.best_global_step
