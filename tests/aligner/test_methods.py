"""Each preference method trains the tiny llama on separable toy pairs (domain code, no gRPC)."""

from __future__ import annotations

import json

import pytest
import torch

from swiftmesh.jobkit.data import load_alignment_data
from swiftmesh.jobkit.settings import LoraSettings, TrainingSettings
from swiftmesh.services.aligner.config import AlignmentConfig, CpoSettings, DpoSettings
from swiftmesh.services.aligner.methods import build_trainer, save_result
from tests.aligner.conftest import CHOSEN, REJECTED, toy_prompts, write_jsonl

FAST = dict(per_device_train_batch_size=8, per_device_eval_batch_size=16, save_steps=0, logging_steps=5,
            lr_scheduler_type="constant", warmup_ratio=0.0, max_length=64)


def _cfg(tmp_path, tiny_dir, rlhf_type, datasets, *, steps=20, lr=5e-3, **kw) -> AlignmentConfig:
    return AlignmentConfig(
        rlhf_type=rlhf_type, model=tiny_dir, datasets=[str(d) for d in datasets], tuner=kw.pop("tuner", "lora"),
        lora=LoraSettings(r=8, lora_alpha=16, lora_dropout=0.0),
        training=TrainingSettings(max_steps=steps, learning_rate=lr, **FAST),
        output_dir=str(tmp_path / f"out-{rlhf_type}"), **kw,
    )


def _accuracy(trainer, rlhf_type) -> float:
    metrics = trainer.evaluate(trainer.train_dataset)
    return metrics["eval_rewards/accuracies"]


def test_dpo_reaches_full_reward_accuracy_and_saves_only_the_adapter(tmp_path, tiny_dir, pairs_file):
    cfg = _cfg(tmp_path, tiny_dir, "dpo", [pairs_file], dpo=DpoSettings(beta=0.1))
    trainer = build_trainer(cfg)
    before = trainer.evaluate(trainer.train_dataset)
    trainer.train()
    after = trainer.evaluate(trainer.train_dataset)
    assert after["eval_rewards/accuracies"] == 1.0
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.1
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
            "logps/chosen", "logps/rejected"} <= logged
    out = tmp_path / "result"
    assert save_result(trainer, out) == "adapter"
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert not (out / "ref").exists()


@pytest.mark.parametrize("loss_type", [["ipo"], ["hinge"], ["robust"]])
def test_dpo_loss_types_and_rpo_build_and_learn(tmp_path, tiny_dir, text_pairs_file, loss_type):
    dpo = DpoSettings(loss_type=loss_type, beta=0.1, label_smoothing=0.1 if loss_type == ["robust"] else 0.0,
                      rpo_alpha=1.0 if loss_type == ["hinge"] else 0.0)
    cfg = _cfg(tmp_path, tiny_dir, "dpo", [text_pairs_file], steps=4, dpo=dpo)
    trainer = build_trainer(cfg)
    assert trainer.loss_types == loss_type + (["sft"] if dpo.rpo_alpha else [])
    before = trainer.evaluate(trainer.train_dataset)["eval_rewards/margins"]
    trainer.train()
    assert trainer.evaluate(trainer.train_dataset)["eval_rewards/margins"] > before


def test_orpo_reaches_full_reward_accuracy(tmp_path, tiny_dir, pairs_file):
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "orpo", [pairs_file], steps=12))
    trainer.train()
    assert _accuracy(trainer, "orpo") == 1.0


def test_simpo_reaches_full_reward_accuracy(tmp_path, tiny_dir, pairs_file):
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "simpo", [pairs_file], steps=12))
    assert trainer.loss_type == "simpo" and trainer.cpo_alpha == 0.0 and trainer.beta == 2.0
    trainer.train()
    assert _accuracy(trainer, "simpo") == 1.0


def test_cpo_builds_with_its_defaults(tmp_path, tiny_dir, text_pairs_file):
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "cpo", [text_pairs_file], steps=5,
                                 cpo=CpoSettings(loss_type="hinge")))
    assert trainer.loss_type == "hinge" and trainer.cpo_alpha == 1.0
    trainer.train()
    assert trainer.state.global_step == 5


def test_kto_moves_chosen_above_rejected(tmp_path, tiny_dir):
    rows = []
    for i, p in enumerate(toy_prompts(16)):
        rows.append({"messages": [{"role": "user", "content": p},
                                  {"role": "assistant", "content": CHOSEN if i % 2 == 0 else REJECTED}],
                     "label": i % 2 == 0})
    f = write_jsonl(tmp_path / "kto.jsonl", rows)
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "kto", [f], steps=15))
    trainer.train()
    m = trainer.evaluate(trainer.train_dataset)
    assert m["eval_rewards/chosen"] > m["eval_rewards/rejected"]
    assert m["eval_rewards/chosen"] > 0 > m["eval_rewards/rejected"]


def test_reward_model_scores_held_out_pairs(tmp_path, tiny_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from swiftmesh.services.aligner.rewards import RewardModelScorer

    good = ["yes", "thank you", "good", "please help"]
    bad = ["no", "bad", "slow", "go away"]

    def rows(seed, n):
        out = []
        for i, p in enumerate(toy_prompts(n, seed)):
            out.append({"prompt": [{"role": "user", "content": p}],
                        "chosen": [{"role": "assistant", "content": good[i % 4] + " " + good[(i + 1) % 4]}],
                        "rejected": [{"role": "assistant", "content": bad[i % 4] + " " + bad[(i + 2) % 4]}],
                        "margin": 1.0})
        return out

    train = write_jsonl(tmp_path / "rm_train.jsonl", rows(1, 32))
    held_out = rows(2, 20)
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "rm", [train], steps=30, lr=5e-3))
    trainer.train()
    out = tmp_path / "rm"
    assert save_result(trainer, out) == "adapter"
    # Score the held-out pairs with the saved reward model, as PPO / GRPO would load it.
    base = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1)
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(out)).merge_and_unload().eval()
    scorer = RewardModelScorer(model, AutoTokenizer.from_pretrained(tiny_dir))
    chosen = scorer([r["prompt"] for r in held_out], [r["chosen"] for r in held_out])
    rejected = scorer([r["prompt"] for r in held_out], [r["rejected"] for r in held_out])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(held_out)
    assert accuracy >= 0.9
    # PPO and GRPO score their rollouts with this reward model (the adapter merged on its base).
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [{"role": "user", "content": p}]}
                                                       for p in toy_prompts(8)])
    for method in ("ppo", "grpo"):
        cfg = _cfg(tmp_path, tiny_dir, method, [prompts], steps=1, lr=1e-3)
        settings = getattr(cfg, method)
        settings.reward_model, settings.reward_model_base = str(out), tiny_dir
        cfg.training.logging_steps = 1
        if method == "ppo":
            cfg.ppo.rollout_batch_size, cfg.ppo.response_length, cfg.ppo.num_ppo_epochs = 4, 6, 1
            cfg.training.per_device_train_batch_size = 4
        else:
            cfg.grpo.num_generations, cfg.grpo.max_completion_length = 4, 6
            cfg.training.per_device_train_batch_size = 4
        trainer = build_trainer(cfg)
        trainer.train()
        logged = {k for h in trainer.state.log_history for k in h}
        name = "reward_model" if method == "ppo" else trainer.reward_func_names[0]
        assert f"rewards/{name}/mean" in logged, (method, sorted(logged))
        if method == "grpo":
            assert isinstance(trainer.reward_funcs[0], torch.nn.Module)


def test_grpo_with_builtin_reward_runs_and_logs_reward(tmp_path, tiny_dir):
    f = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in toy_prompts(8)])
    cfg = _cfg(tmp_path, tiny_dir, "grpo", [f], steps=2, lr=1e-3)
    cfg.grpo.reward_funcs = ["contains:the"]
    cfg.grpo.num_generations = 4
    cfg.grpo.max_completion_length = 8
    cfg.training.per_device_train_batch_size = 4
    cfg.training.logging_steps = 1
    trainer = build_trainer(cfg)
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert "reward" in logged and any(k.startswith("rewards/contains") for k in logged)


def test_continuing_an_sft_adapter_uses_the_sft_policy_as_reference(tmp_path, tiny_dir, pairs_file):
    """SFT then DPO: the adapter is trained further and a frozen copy of it is the reference
    (the reference log-probs equal the SFT policy's, not the base model's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    sft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # a non-trivial "SFT" adapter
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    sft_dir = tmp_path / "sft"
    sft.save_pretrained(sft_dir)
    cfg = _cfg(tmp_path, tiny_dir, "dpo", [pairs_file], steps=3, adapter=str(sft_dir))
    trainer = build_trainer(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default", "ref"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    before = trainer.evaluate(trainer.train_dataset)
    # Before any step the policy equals its reference: zero implicit rewards.
    assert abs(before["eval_rewards/chosen"]) < 1e-4 and abs(before["eval_rewards/rejected"]) < 1e-4
    trainer.train()
    out = tmp_path / "dpo-out"
    save_result(trainer, out)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8 and not (out / "ref").exists()


def test_full_fine_tuning_has_a_frozen_reference_copy(tmp_path, tiny_dir, text_pairs_file):
    cfg = _cfg(tmp_path, tiny_dir, "dpo", [text_pairs_file], steps=3, lr=1e-4, tuner="full")
    trainer = build_trainer(cfg)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    pol_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    # The reference stays frozen at the initial policy while the policy moves.
    assert all(torch.equal(p, ref_before[n]) for n, p in trainer.ref_model.named_parameters())
    assert any(not torch.equal(p, pol_before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(ref_before[n], pol_before[n]) for n in pol_before)
    out = tmp_path / "full"
    assert save_result(trainer, out) == "full"
    assert (out / "model.safetensors").exists()


def test_conversational_data_needs_a_chat_template(tmp_path, pairs_file):
    from swiftmesh.runtime.errors import InvalidArgument
    from swiftmesh.testing.tiny import make_tiny_llama

    plain = make_tiny_llama(tmp_path / "plain", chat_template=False)
    with pytest.raises(InvalidArgument, match="chat template"):
        build_trainer(_cfg(tmp_path, str(plain), "dpo", [pairs_file]))


def test_long_prompts_are_truncated_keeping_their_end(tmp_path, tiny_dir):
    from transformers import AutoTokenizer

    from swiftmesh.services.aligner.methods import truncate_prompt

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = " ".join(toy_prompts(40))
    short = truncate_prompt(tok, text, 16)
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 16 and text.endswith(short.strip()[-10:])
    conv = [{"role": "system", "content": "be brief"}] + [
        {"role": r, "content": t} for r, t in zip(["user", "assistant"] * 10, toy_prompts(20))] + [
        {"role": "user", "content": "last question"}]
    cut = truncate_prompt(tok, conv, 40)
    assert cut[0]["role"] == "system" and cut[-1]["content"] == "last question"
    assert cut[1]["role"] == "user" and len(cut) < len(conv)
    assert len(tok.apply_chat_template(cut, add_generation_prompt=True, tokenize=True, return_dict=False)) <= 40
    data = load_alignment_data([str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": text}]))], "grpo")
    assert data.rows[0]["prompt"] == text


@pytest.mark.parametrize("rlhf_type", ["dpo", "kto", "orpo", "rm", "ppo", "grpo"])
def test_spec_round_trips_through_the_proto_and_the_job_store_json(rlhf_type):
    from swiftmesh.clients.aligner import build_spec
    from swiftmesh.services.aligner.config import AlignmentSpec
    from swiftmesh.services.aligner.servicer import SPEC

    msg = build_spec(rlhf_type=rlhf_type, model="models/base", datasets=["d.jsonl"], tuner="dora", strategy="ddp",
                     num_workers=2, max_steps=3, r=4, **({"beta": 0.3} if rlhf_type in ("dpo", "kto") else {}))
    spec = SPEC.from_proto(msg)
    assert spec.rlhf_type == rlhf_type and spec.method_config is not None and spec.lora.r == 4
    again = AlignmentSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    assert SPEC.from_proto(SPEC.to_proto(again)) == spec


def test_build_trainer_refuses_an_unused_column_unless_ignore_columns(tmp_path, tiny_dir, pairs_file):
    """The library path (AlignmentConfig -> build_trainer) reads ``ignore_columns`` as the job kinds do (issue 19)."""
    from swiftmesh.runtime.errors import InvalidArgument

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    rows[1]["annotator"] = "alice"
    extra = write_jsonl(tmp_path / "extra.jsonl", rows)
    with pytest.raises(InvalidArgument, match="row 2.*annotator"):
        build_trainer(_cfg(tmp_path, tiny_dir, "dpo", [extra], steps=1))
    trainer = build_trainer(_cfg(tmp_path, tiny_dir, "dpo", [extra], steps=1, ignore_columns=True))
    assert len(trainer.train_dataset) == len(rows)
