"""SmolLM2-135M-Instruct (a real model) through the whole chain on loopback: the trainer's SFT
job leaves a LoRA adapter in the hub, the aligner's DPO job continues it on identity preference
pairs, and the chosen-minus-rejected log-probability margin rises."""

from __future__ import annotations

import pytest
import torch

from swiftmesh.clients.aligner import build_spec
from swiftmesh.jobs.v1 import jobs_pb2
from tests.aligner.conftest import start_stack

S = jobs_pb2.JobState


@pytest.fixture(scope="module")
def stack(tmp_path_factory, smollm2_dir):
    st = start_stack(tmp_path_factory.mktemp("smol") / "data", trainer=True)
    st.hub(lambda h: h.pull(str(smollm2_dir), "smollm2"))
    yield st
    st.stop()


def _margin(base_dir, adapter_dir, rows) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected) under base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    total = 0.0
    for row in rows:
        prompt = row["messages"][:-1]
        p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        for reply, sign in ((row["messages"][-1]["content"], 1), (row["rejected_response"], -1)):
            ids = tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=True,
                                          return_dict=False)
            x = torch.tensor([ids])
            with torch.no_grad():
                lp = model(x).logits[0, :-1].log_softmax(-1).gather(-1, x[0, 1:, None])[:, 0]
            total += sign * lp[len(p_ids) - 1:].sum().item()
    return total / len(rows)


def test_dpo_after_the_trainers_sft_adapter_raises_the_margin(stack, tmp_path):
    from swiftmesh.clients.hub_blocking import materialize_sync
    from swiftmesh.clients.trainer import TrainerClient
    from swiftmesh.clients.trainer import build_spec as sft_spec
    from swiftmesh.data.identity import identity_rows, render_identity_dataset

    sft_data = render_identity_dataset("sft", "Swifty", "the SwiftMesh team", tmp_path / "sft.jsonl", limit=16)
    dpo_data = render_identity_dataset("dpo", "Swifty", "the SwiftMesh team", tmp_path / "dpo.jsonl", limit=16)

    async def run_sft():
        async with TrainerClient(stack.settings) as t:
            job = await t.create_job(sft_spec(model="models/smollm2", datasets=[str(sft_data)], max_steps=4,
                                              learning_rate=2e-4, per_device_train_batch_size=4, max_length=256,
                                              bf16=False, output_model_id="smollm2-sft"), job_id="smol-sft")
            return await t.wait(job.name, timeout=900)

    sft = stack.run(run_sft(), 900)
    assert sft.state == S.JOB_STATE_SUCCEEDED, sft.error.message
    spec = build_spec(rlhf_type="dpo", model="models/smollm2-sft", datasets=[str(dpo_data)], max_steps=6,
                      learning_rate=5e-4, per_device_train_batch_size=4, beta=0.1, max_length=256, bf16=False,
                      warmup_ratio=0.01, output_model_id="smollm2-dpo")
    job = stack.aligner(lambda a: a.create_job(spec, job_id="smol-dpo"))
    job = stack.aligner(lambda a: a.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    model = stack.hub(lambda h: h.get("models/smollm2-dpo"))
    assert model.lineage.base_model == "models/smollm2" and model.lineage.parent_model == "models/smollm2-sft"
    evs = stack.aligner(lambda a: _collect(a.watch(job.name, follow=False)))
    margins = [e.metrics.metrics["train/rewards/margins"] for e in evs
               if e.HasField("metrics") and "train/rewards/margins" in e.metrics.metrics]
    assert len(margins) == 6 and margins[-1] > margins[0]
    base = materialize_sync(stack.settings, "models/smollm2")
    rows = identity_rows("dpo", "Swifty", "the SwiftMesh team", limit=16)
    before = _margin(base, materialize_sync(stack.settings, "models/smollm2-sft"), rows)
    after = _margin(base, materialize_sync(stack.settings, "models/smollm2-dpo"), rows)
    assert after > before + 1.0, (before, after)


async def _collect(it):
    return [e async for e in it]
