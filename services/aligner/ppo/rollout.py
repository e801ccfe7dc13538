"""Steps 1-4 of a PPO update (see :mod:`.trainer`): generate responses with the policy, score them
(reward functions, ``missing_eos_penalty``), evaluate them with the policy, its value head and the
reference policy, and turn that into KL-shaped rewards and GAE advantages (arXiv:2403.17031).

:class:`RolloutMixin` is mixed into :class:`~.trainer.PPOTrainer`; it uses the trainer's
``args`` (:class:`~.config.PPOConfig`), ``accelerator``, ``model``, ``ref_model`` /
``ref_adapter``, ``processing_class``, ``reward_funcs``, ``stop_token_ids`` and the prompt
columns the trainer tokenised (``_query_ids``, ``_prompts``, ``_columns``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import GenerationConfig

from . import core


class RolloutMixin:
    """Rollouts of :class:`~.trainer.PPOTrainer`: :meth:`rollout` returns the batch its PPO epochs optimise."""

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.processing_class.pad_token_id
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, L - len(s):] = 1
        dev = self.accelerator.device
        return ids.to(dev), mask.to(dev)

    @contextlib.contextmanager
    def _reference(self):
        """Yields a callable ``(input_ids, attention_mask) -> logits`` of the reference policy."""
        if self.ref_model is not None:
            ref = self.ref_model

            def fwd(ids, mask):
                pos = (mask.long().cumsum(1) - 1).clamp(min=0)
                return ref(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits

            yield fwd
            return
        from trl.trainer.utils import use_adapter

        policy_and_value = self.accelerator.unwrap_model(self.model)
        with use_adapter(policy_and_value.policy, adapter_name=self.ref_adapter):
            yield lambda ids, mask: policy_and_value(ids, mask)[0]

    def _score(self, prompts: list, completions: list, completion_ids: list[list[int]], columns: dict) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(len(prompts), dtype=torch.float32)
        per_func: dict[str, float] = {}
        for f in self.reward_funcs:
            vals = f(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            t = torch.tensor([float("nan") if v is None else float(v) for v in vals], dtype=torch.float32)
            t = torch.nan_to_num(t, nan=0.0)
            name = getattr(f, "__name__", type(f).__name__)
            per_func[f"rewards/{name}/mean"] = t.mean().item()
            total += t
        return total.to(self.accelerator.device), per_func

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def rollout(self, indices: list[int]) -> dict[str, Any]:
        """Generate, score and evaluate responses for the prompts ``indices`` (step 1-4)."""
        args = self.args
        tok = self.processing_class
        unwrapped = self.accelerator.unwrap_model(self.model)
        policy = unwrapped.policy
        gen_cfg = GenerationConfig(
            max_new_tokens=args.response_length, do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0,
            pad_token_id=tok.pad_token_id, eos_token_id=self.stop_token_ids, bos_token_id=None,
        )
        queries, qmask = self._left_pad([self._query_ids[i] for i in indices])
        ctx = queries.size(1)
        fb = max(1, args.local_rollout_forward_batch_size)
        responses = []
        was_training = unwrapped.training
        unwrapped.eval()
        with self.accelerator.autocast():
            for s in range(0, len(indices), fb):
                out = policy.generate(input_ids=queries[s:s + fb], attention_mask=qmask[s:s + fb],
                                      generation_config=gen_cfg, use_cache=True)
                r = out[:, ctx:]
                if r.size(1) < args.response_length:
                    r = torch.nn.functional.pad(r, (0, args.response_length - r.size(1)), value=tok.pad_token_id)
                responses.append(r)
        responses = torch.cat(responses, 0)
        mask, lengths, has_eos = core.response_mask(responses, self.stop_token_ids)
        responses = core.truncate_after_eos(responses, mask, tok.pad_token_id)
        query_responses = torch.cat([queries, responses], 1)
        attn = torch.cat([qmask, mask.long()], 1)
        temp = args.temperature + 1e-7
        logprobs, ref_logprobs, values = [], [], []
        with self.accelerator.autocast():
            for s in range(0, len(indices), fb):
                sl = slice(s, s + fb)
                logits, v = unwrapped(query_responses[sl], attn[sl])
                logprobs.append(core.logprobs_from_logits(logits[:, ctx - 1:-1] / temp, responses[sl]))
                values.append(v[:, ctx - 1:-1].float())
                del logits
            with self._reference() as ref_fwd:
                for s in range(0, len(indices), fb):
                    sl = slice(s, s + fb)
                    rl = ref_fwd(query_responses[sl], attn[sl])
                    ref_logprobs.append(core.logprobs_from_logits(rl[:, ctx - 1:-1] / temp, responses[sl]))
                    del rl
        if was_training:
            unwrapped.train()
        logprobs, ref_logprobs, values = torch.cat(logprobs), torch.cat(ref_logprobs), torch.cat(values)

        # Score the decoded responses (stop tokens excluded).
        stop = set(self.stop_token_ids)
        completion_ids = [[int(t) for t in responses[i, : int(lengths[i])].tolist() if int(t) not in stop]
                          for i in range(len(indices))]
        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        prompts = [self._prompts[i] for i in indices]
        completions = [[{"role": "assistant", "content": t}] if isinstance(p, list) else t
                       for p, t in zip(prompts, texts)]
        columns = {k: [v[i] for i in indices] for k, v in self._columns.items()}
        scores, per_func = self._score(prompts, completions, completion_ids, columns)
        raw_scores = scores.clone()
        if args.missing_eos_penalty:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()

        kl = core.per_token_kl(logprobs, ref_logprobs, args.kl_estimator) * mask
        rewards, non_score = core.shape_rewards(scores, kl, mask, args.kl_coef)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = core.compute_gae(rewards, values, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask) * mask
        return {
            "query_responses": query_responses, "attention_mask": attn, "responses": responses, "context_length": ctx,
            "mask": mask, "lengths": lengths, "has_eos": has_eos, "logprobs": logprobs, "ref_logprobs": ref_logprobs,
            "values": values * mask, "scores": scores, "raw_scores": raw_scores, "kl": kl, "non_score": non_score,
            "advantages": advantages, "returns": returns, "per_func": per_func, "texts": texts,
        }
