"""The aligner service end to end on loopback: a real hub, the aligner, an embedded 2-CPU Ray.

One hub, one aligner and one Ray for the whole module (they are slow to start)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from swiftmesh.clients.aligner import build_spec
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.jobs.v1 import jobs_pb2
from swiftmesh.runtime.errors import InvalidArgument, NotFound
from tests.aligner.conftest import CHOSEN, REJECTED, toy_prompts, write_jsonl
from tests.aligner.conftest import start_stack

S = jobs_pb2.JobState
TARGET = "token_count:" + ",".join(str(i) for i in range(3, 1024, 8))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    import ray

    st = start_stack(tmp_path_factory.mktemp("svc") / "data")
    st.hub(lambda h: h.pull(str(tiny_model_dir), "tiny"))
    yield st
    st.stop()
    assert not ray.is_initialized(), "the aligner's embedded Ray was not shut down"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": CHOSEN}],
             "rejected_response": REJECTED} for p in toy_prompts(16)]
    return write_jsonl(tmp_path_factory.mktemp("d") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def sft_adapter(stack, tiny_model_dir, tmp_path_factory):
    """A PEFT adapter on the tiny model registered in the hub as an SFT job would leave it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    d = tmp_path_factory.mktemp("sft") / "tiny-sft"
    sft.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    stack.hub(lambda h: h.upload_dir(d, "tiny-sft", format=hub_pb2.MODEL_FORMAT_PEFT_ADAPTER,
                                     lineage={"base_model": "models/tiny"}))
    return "models/tiny-sft"


def events_of(stack, name):
    return stack.aligner(lambda a: _collect(a.watch(name, follow=False)))


async def _collect(it):
    return [e async for e in it]


def metric_series(events, key):
    return [(e.metrics.step, e.metrics.metrics[key]) for e in events
            if e.HasField("metrics") and key in e.metrics.metrics]


def test_create_job_rejects_bad_specs_and_data_before_any_worker(stack, pairs, tmp_path):
    spec = build_spec(rlhf_type="dpo", model="models/not-in-hub", datasets=[str(pairs)], max_steps=2)
    with pytest.raises(NotFound, match="not-in-hub"):
        stack.aligner(lambda a: a.create_job(spec))
    # A KTO-style row in a DPO job: INVALID_ARGUMENT naming the row, the fields DPO expects, a hint.
    bad = write_jsonl(tmp_path / "bad.jsonl", [json.loads(pairs.read_text().splitlines()[0]),
                                               {"prompt": [{"role": "user", "content": "hi"}],
                                                "completion": [{"role": "assistant", "content": "hello"}],
                                                "label": True}])
    spec = build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(bad)], max_steps=2)
    with pytest.raises(InvalidArgument) as e:
        stack.aligner(lambda a: a.create_job(spec))
    err = e.value
    assert err.reason == "BAD_DATASET_ROW"
    assert f"'{bad}', row 2: this row does not fit any DPO dataset format" in err.message
    assert "messages + rejected_response" in err.message and "train it with --rlhf_type kto" in err.message
    assert [f.field for f in err.field_violations] == ["spec.datasets[0]", f"{bad}:2"]
    # For KTO both rows fit a format, but different ones: one file holds one format (issue 19).
    with pytest.raises(InvalidArgument) as e:
        stack.aligner(lambda a: a.create_job(build_spec(rlhf_type="kto", model="models/tiny", datasets=[str(bad)],
                                                        max_steps=2), validate_only=True))
    assert e.value.reason == "MIXED_DATASET_FORMATS" and "row 2" in e.value.message
    ok = stack.aligner(lambda a: a.create_job(build_spec(rlhf_type="kto", model="models/tiny", datasets=[str(pairs)],
                                                         max_steps=2), validate_only=True))
    assert ok.kind == "kto" and ok.state == S.JOB_STATE_UNSPECIFIED
    assert stack.aligner(lambda a: a.list()) == []
    # Spec checks: method settings of another method, PPO without a reward, PPO under ZeRO.
    spec = build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(pairs)])
    spec.kto.beta = 0.2
    with pytest.raises(InvalidArgument, match="rlhf_type dpo reads spec.dpo, not spec.kto"):
        stack.aligner(lambda a: a.create_job(spec))
    spec = build_spec(rlhf_type="ppo", model="models/tiny", datasets=[str(pairs)], strategy="zero3", num_workers=2)
    with pytest.raises(InvalidArgument) as e:
        stack.aligner(lambda a: a.create_job(spec))
    fields = {f.field for f in e.value.field_violations}
    assert {"spec.ppo.reward_model", "spec.distribution.strategy"} <= fields
    spec = build_spec(rlhf_type="grpo", model="models/tiny", datasets=[str(pairs)], reward_funcs=["regex:("],
                      num_generations=3, per_device_train_batch_size=4)
    with pytest.raises(InvalidArgument) as e:
        stack.aligner(lambda a: a.create_job(spec))
    fields = {f.field for f in e.value.field_violations}
    assert {"spec.grpo.reward_funcs[0]", "spec.grpo.num_generations"} <= fields
    # EstimateJob: the full fine-tuning reference copy is counted.
    lora = stack.aligner(lambda a: a.estimate(build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(pairs)])))
    full = stack.aligner(lambda a: a.estimate(build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(pairs)],
                                                         tuner="full")))
    assert lora.fits and lora.trainable_parameters < full.trainable_parameters == full.total_parameters
    assert full.weights_bytes >= 2 * full.total_parameters * 4
    assert any("frozen reference copy" in n for n in full.notes)
    assert any("adapter disabled" in n for n in lora.notes)


def test_dpo_under_zero3_with_two_ray_workers_from_an_sft_adapter(stack, pairs, sft_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swiftmesh.clients.hub_blocking import materialize_sync
    from swiftmesh.jobkit.tensorboard import read_scalars

    spec = build_spec(rlhf_type="dpo", model=sft_adapter, datasets=[str(pairs)], strategy="zero3", num_workers=2,
                      max_steps=4, learning_rate=5e-3, per_device_train_batch_size=4, save_steps=2, beta=0.1,
                      warmup_ratio=0.01, output_model_id="tiny-dpo")
    job = stack.aligner(lambda a: a.create_job(spec, job_id="dpo-zero3"))
    job = stack.aligner(lambda a: a.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    evs = events_of(stack, job.name)
    logs = [e.log.message for e in evs if e.HasField("log")]
    assert any("world size 2" in m and "DeepSpeed" in m for m in logs), logs[:30]
    assert any("continuing adapter models/tiny-sft; reference: its frozen copy" in m for m in logs)
    margins = metric_series(evs, "train/rewards/margins")
    assert [s for s, _ in margins] == [1, 2, 3, 4] and margins[-1][1] > margins[0][1]
    for key in ("train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracies", "train/logps/chosen",
                "train/logps/rejected", "train/loss"):
        assert metric_series(evs, key), key
    assert [c.step for c in job.checkpoints] == [2, 4]
    tb = read_scalars(job.tensorboard_dir)
    assert [s for s, _ in tb["train/rewards/margins"]] == [1, 2, 3, 4]
    # The result: an adapter in the hub with lineage base -> sft adapter -> dpo adapter, that plain
    # peft loads on the base; the policy it encodes prefers the chosen reply more than the SFT one did.
    assert [(a.model, a.kind) for a in job.artifacts] == [("models/tiny-dpo", "adapter")]
    model = stack.hub(lambda h: h.get("models/tiny-dpo"))
    assert model.lineage.base_model == "models/tiny" and model.lineage.parent_model == "models/tiny-sft"
    assert model.lineage.job == job.name
    d = materialize_sync(stack.settings, "models/tiny-dpo")
    assert not (d / "ref").exists() and json.loads((d / "adapter_config.json").read_text())["r"] == 4
    base_dir = materialize_sync(stack.settings, "models/tiny")
    sft_dir = materialize_sync(stack.settings, "models/tiny-sft")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)

    def margin(adapter_dir) -> float:
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
        total = 0.0
        for p in toy_prompts(16):
            for reply, sign in ((CHOSEN, 1), (REJECTED, -1)):
                prompt = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
                full = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant",
                                                "content": reply}], tokenize=True, return_dict=False)
                ids = torch.tensor([full])
                with torch.no_grad():
                    lp = m(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
                total += sign * lp[len(prompt) - 1:].sum().item()
        return total / 16

    assert margin(d) > margin(sft_dir) + 0.5


def test_ppo_job_cancel_and_resume_mid_run(stack, tmp_path):
    import ray

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in toy_prompts(32)])
    spec = build_spec(rlhf_type="ppo", model="models/tiny", datasets=[str(prompts)], max_steps=24, save_steps=2,
                      learning_rate=5e-3, per_device_train_batch_size=8, reward_funcs=[TARGET], rollout_batch_size=8,
                      response_length=8, num_ppo_epochs=2, kl_coef=0.2, temperature=1.0, bf16=False)
    job = stack.aligner(lambda a: a.create_job(spec, job_id="ppo-cancel"))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        j = stack.aligner(lambda a: a.get(job.name))
        if j.checkpoints or j.state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED):
            break
        time.sleep(0.2)
    assert j.state == S.JOB_STATE_RUNNING and j.checkpoints, (j.state, j.error.message)
    j = stack.aligner(lambda a: a.cancel(job.name))
    j = stack.aligner(lambda a: a.wait(job.name, timeout=120))
    assert j.state == S.JOB_STATE_CANCELLED and j.checkpoints
    stopped_at = j.checkpoints[-1].step
    assert 2 <= stopped_at < 24 and j.progress.step < 24
    t0 = time.monotonic()
    while ray.available_resources().get("CPU", 0) < 2.0:
        assert time.monotonic() - t0 < 10.0, "Ray CPUs were not freed"
        time.sleep(0.1)
    j = stack.aligner(lambda a: a.resume(job.name))
    assert j.state == S.JOB_STATE_QUEUED
    j = stack.aligner(lambda a: a.wait(job.name, timeout=900))
    assert j.state == S.JOB_STATE_SUCCEEDED, j.error.message
    assert j.attempt == 2 and j.progress.step == 24
    evs = events_of(stack, job.name)
    logs = [e.log.message for e in evs if e.HasField("log")]
    assert any(f"resuming at step {stopped_at}" in m for m in logs), [m for m in logs if "training" in m]
    scores = metric_series(evs, "train/objective/scores")
    resumed = [s for s, _ in scores if s > stopped_at]
    assert resumed and resumed[0] == stopped_at + 1 and resumed[-1] == 24
    for key in ("train/loss/value_avg", "train/policy/clipfrac_avg", "train/objective/kl", "train/reward"):
        assert metric_series(evs, key), key
    assert [(a.model, a.kind) for a in j.artifacts] == [(f"models/tiny-ppo-cancel", "adapter")]


def test_cli_rlhf_validates_estimates_and_reports_bad_rows(stack, pairs, tmp_path):
    from typer.testing import CliRunner

    from swiftmesh.cli.main import app

    runner = CliRunner()
    target = stack.settings.aligner.target
    base = ["rlhf", "--rlhf_type", "dpo", "--model", "tiny", "--aligner", target, "--max_steps", "2"]
    r = runner.invoke(app, [*base, "--dataset", str(pairs), "--beta", "0.2", "--validate_only"])
    assert r.exit_code == 0, r.output
    assert "valid" in r.output and "dpo" in r.output
    r = runner.invoke(app, [*base, "--dataset", str(pairs), "--estimate", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fits"] is True
    bad = write_jsonl(tmp_path / "sft_like.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello"}]}])
    r = runner.invoke(app, [*base, "--dataset", str(bad)])
    assert r.exit_code == 1
    assert "row 1" in r.output and "rejected_response" in r.output and "looks like SFT data" in r.output
    r = runner.invoke(app, [*base, "--dataset", str(pairs), "--reward_model", "models/rm"])
    assert r.exit_code == 2 and "does not apply to --rlhf_type dpo" in r.output
    # A content column no format reads: refused naming row and column; --ignore_columns drops it (issue 19).
    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:4]]
    rows[2]["annotator"] = "bob"
    extra = write_jsonl(tmp_path / "extra.jsonl", rows)
    r = runner.invoke(app, [*base, "--dataset", str(extra), "--validate_only"])
    out = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 1 and "row 3" in out and "annotator" in out and "INVALID_ARGUMENT" in out, r.output
    r = runner.invoke(app, [*base, "--dataset", str(extra), "--validate_only", "--ignore_columns"])
    assert r.exit_code == 0 and "valid" in r.output, r.output


def test_ignore_columns_is_refused_without_and_dropped_with_a_logged_count(tiny_model_dir, pairs, tmp_path):
    """Issue 19: a content column no DPO format reads is INVALID_ARGUMENT naming row and column in
    the CreateJob prepare path (proto spec -> servicer translation -> the kind's prepare, before
    any worker); ``ignore_columns`` drops it and the job's notes (its log lines) count it."""
    from swiftmesh.jobkit import LocalModelSource, PrepareContext
    from swiftmesh.jobkit.kinds import ClusterResources
    from swiftmesh.runtime.config import Settings
    from swiftmesh.services.aligner.kinds import AlignKind
    from swiftmesh.services.aligner.servicer import alignment_spec

    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:4]]
    for r in rows[1:]:
        r["annotator"] = "alice"
    extra = write_jsonl(tmp_path / "extra.jsonl", rows)
    src = LocalModelSource(tmp_path / "models")
    src.add(tiny_model_dir, "tiny")
    ctx = PrepareContext(settings=Settings.load(None, data_dir=tmp_path / "data"), models=src, job="jobs/x",
                         cluster=ClusterResources.local)
    spec = build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(extra)], max_steps=2)
    with pytest.raises(InvalidArgument) as e:
        AlignKind("dpo").prepare(alignment_spec(spec), ctx)
    assert "row 2" in e.value.message and "annotator" in e.value.message and "ignore_columns" in e.value.message
    spec = build_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(extra)], max_steps=2, ignore_columns=True)
    assert spec.ignore_columns and alignment_spec(spec).ignore_columns
    plan = AlignKind("dpo").prepare(alignment_spec(spec), ctx)
    assert len(plan.data["train"]) == 4
    assert any("ignore_columns dropped 'annotator' from 3 rows" in n for n in plan.notes), plan.notes
