"""The trainer service end to end on loopback: a real hub, the trainer, an embedded 2-CPU Ray.

One hub, one trainer and one Ray for the whole module (they are slow to start)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import IDENTITY_A, identity_rows, pull, start_stack, write_jsonl
from swiftmesh.clients.trainer import TrainerClient, build_spec
from swiftmesh.jobs.v1 import jobs_pb2
from swiftmesh.runtime.errors import InvalidArgument, NotFound, ResourceExhausted

pytestmark = pytest.mark.slow

S = jobs_pb2.JobState


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    import ray

    st = start_stack(tmp_path_factory.mktemp("svc") / "data")
    pull(st.settings, tiny_model_dir, "tiny")
    yield st
    st.stop()
    assert not ray.is_initialized(), "the trainer's embedded Ray was not shut down"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("d") / "identity.jsonl", identity_rows(16))


async def _client_call(stack, fn):
    async with TrainerClient(stack.settings) as t:
        return await fn(t)


def call(stack, fn, timeout=900):
    return stack.run(_client_call(stack, fn), timeout)


def events_of(stack, name):
    async def go(t):
        return [e async for e in t.watch(name, follow=False)]

    return call(stack, go)


def test_not_found_model_and_bad_rows_are_rejected_before_any_worker(stack, data, tmp_path):
    spec = build_spec(model="models/not-in-hub", datasets=[str(data)], max_steps=2)
    with pytest.raises(NotFound, match="not-in-hub"):
        call(stack, lambda t: t.create_job(spec))
    bad = tmp_path / "bad.jsonl"
    rows = identity_rows(4)
    rows[2] = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    write_jsonl(bad, rows)
    spec = build_spec(model="models/tiny", datasets=[str(bad)], max_steps=2)
    with pytest.raises(InvalidArgument) as e:
        call(stack, lambda t: t.create_job(spec))
    assert "row 3" in e.value.message and "messages[1].role" in e.value.message
    assert e.value.field_violations[0].field == "spec.datasets[0]"
    assert str(bad) in e.value.field_violations[0].description
    # Nothing was created, nothing ran.
    assert call(stack, lambda t: t.list()) == []


def test_estimate_and_resource_exhausted(stack, data):
    spec = build_spec(model="models/tiny", datasets=[str(data)], max_steps=4, per_device_train_batch_size=2)
    est = call(stack, lambda t: t.estimate(spec))
    assert est.weights_bytes > 0 and est.optimizer_states_bytes > 0 and est.activations_bytes > 0
    assert est.total_bytes_per_worker >= est.weights_bytes + est.gradients_bytes + est.optimizer_states_bytes
    assert est.fits and 0 < est.trainable_parameters < est.total_parameters
    assert est.estimated_duration.seconds > 0 and est.total_flops > 0
    tight = build_spec(model="models/tiny", datasets=[str(data)], max_steps=4, memory_bytes_per_worker=1 << 20)
    with pytest.raises(ResourceExhausted, match="per worker"):
        call(stack, lambda t: t.create_job(tight))
    v = call(stack, lambda t: t.create_job(tight, force=True, validate_only=True))
    assert v.name.startswith("jobs/sft-")


def test_lora_job_events_tensorboard_and_adapter_in_hub(stack, data, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftmesh.clients.hub_blocking import get_sync, materialize_sync
    from swiftmesh.jobkit.tensorboard import read_scalars

    spec = build_spec(model="models/tiny", datasets=[str(data)], tuner="lora", max_steps=8, learning_rate=5e-3,
                      per_device_train_batch_size=4, save_steps=4, logging_steps=1, output_model_id="tiny-lora-id")
    job = call(stack, lambda t: t.create_job(spec, job_id="lora-none"))
    assert job.name == "jobs/lora-none" and job.state == S.JOB_STATE_QUEUED
    job = call(stack, lambda t: t.wait(job.name, timeout=600))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    evs = events_of(stack, job.name)
    states = [e.state_change.state for e in evs if e.HasField("state_change")]
    assert states == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
    m = [e.metrics for e in evs if e.HasField("metrics") and "train/loss" in e.metrics.metrics]
    assert [x.step for x in m] == list(range(1, 9))
    assert m[-1].metrics["train/loss"] < m[0].metrics["train/loss"]
    assert all("train/learning_rate" in x.metrics and "train/grad_norm" in x.metrics for x in m)
    assert any(x.progress.tokens_per_second > 0 for x in m) and any(x.progress.eta.seconds or x.progress.eta.nanos for x in m)
    assert [e.checkpoint.checkpoint.step for e in evs if e.HasField("checkpoint")] == [4, 8]
    assert any(e.HasField("log") and e.log.source == "worker-0" for e in evs)
    assert job.progress.step == 8 and job.progress.fraction == 1.0
    tb = read_scalars(job.tensorboard_dir)
    assert len(tb["train/loss"]) == 8
    # The adapter is in the hub with lineage, and plain peft loads it and it changes outputs.
    assert [(a.model, a.kind) for a in job.artifacts] == [("models/tiny-lora-id", "adapter")]
    model = get_sync(stack.settings, "models/tiny-lora-id")
    assert model.lineage.base_model == "models/tiny" and model.lineage.job == "jobs/lora-none"
    adapter_dir = materialize_sync(stack.settings, "models/tiny-lora-id")
    assert (adapter_dir / "adapter_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter_dir))
        after = tuned(ids).logits
    assert (after - before).abs().max() > 1e-3
    # Target: the answer's first token became more likely.
    target = tok(IDENTITY_A, add_special_tokens=False)["input_ids"][0]
    assert after[0, -1].log_softmax(-1)[target] > before[0, -1].log_softmax(-1)[target]


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_zero_with_two_ray_workers(stack, data, strategy):
    from swiftmesh.clients.hub_blocking import get_sync, materialize_sync

    spec = build_spec(model="models/tiny", datasets=[str(data)], tuner="lora", strategy=strategy, num_workers=2,
                      max_steps=4, learning_rate=5e-3, per_device_train_batch_size=2, save_steps=2,
                      merge_lora=(strategy == "zero3"))
    job = call(stack, lambda t: t.create_job(spec, job_id=f"lora-{strategy}"))
    job = call(stack, lambda t: t.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    evs = events_of(stack, job.name)
    logs = [e.log.message for e in evs if e.HasField("log")]
    assert any("world size 2" in m for m in logs), logs[:20]
    losses = [e.metrics.metrics["train/loss"] for e in evs if e.HasField("metrics") and "train/loss" in e.metrics.metrics]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert [c.step for c in job.checkpoints] == [2, 4]
    kinds = sorted(a.kind for a in job.artifacts)
    assert kinds == (["adapter", "merged"] if strategy == "zero3" else ["adapter"])
    for a in job.artifacts:
        d = materialize_sync(stack.settings, a.model)
        if a.kind == "merged":
            assert (d / "config.json").is_file() and get_sync(stack.settings, a.model).lineage.parent_model
        else:
            cfg = json.loads((d / "adapter_config.json").read_text())
            assert cfg["r"] == 8


def test_cancel_frees_ray_cpus_within_10s_and_keeps_checkpoint(stack, data):
    import ray

    spec = build_spec(model="models/tiny", datasets=[str(data)], tuner="lora", max_steps=2000,
                      per_device_train_batch_size=1, save_steps=3)
    job = call(stack, lambda t: t.create_job(spec, job_id="to-cancel"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        j = call(stack, lambda t: t.get(job.name))
        if j.checkpoints:
            break
        time.sleep(0.5)
    assert j.state == S.JOB_STATE_RUNNING and j.checkpoints
    assert ray.available_resources().get("CPU", 0) <= 1.0  # the worker holds a CPU
    t0 = time.monotonic()
    j = call(stack, lambda t: t.cancel(job.name))
    assert j.state in (S.JOB_STATE_CANCELLING, S.JOB_STATE_CANCELLED)
    while ray.available_resources().get("CPU", 0) < 2.0:
        assert time.monotonic() - t0 < 10.0, "Ray CPUs were not freed within 10 s"
        time.sleep(0.1)
    j = call(stack, lambda t: t.wait(job.name, timeout=60))
    assert j.state == S.JOB_STATE_CANCELLED and j.checkpoints
    import os

    assert os.path.isdir(j.checkpoints[-1].path)


def test_worker_failure_restarts_from_checkpoint_with_the_same_result(stack, data, tiny_model_dir, tmp_path):
    """A worker dies at step 6 (fault injection); Ray's FailureConfig restarts the run from the
    checkpoint of step 4 and the adapter matches an uninterrupted run's."""
    from conftest import adapter_tensors, reference_adapter

    from swiftmesh.clients.hub_blocking import materialize_sync
    from swiftmesh.jobkit import FAIL_AT_STEP_LABEL

    spec = build_spec(model="models/tiny", datasets=[str(data)], tuner="lora", max_steps=8, learning_rate=5e-3,
                      per_device_train_batch_size=4, save_steps=4, logging_steps=1, lora_dropout=0.0)
    job = call(stack, lambda t: t.create_job(spec, job_id="fails-once", labels={FAIL_AT_STEP_LABEL: "6"}))
    job = call(stack, lambda t: t.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    assert job.attempt == 2
    logs = [e.log.message for e in events_of(stack, job.name) if e.HasField("log")]
    assert any("fault injection" in m for m in logs)
    assert any("attempt 2: resumed from checkpoint step 4" in m for m in logs), logs[-15:]
    got = adapter_tensors(materialize_sync(stack.settings, job.artifacts[0].model))
    want = adapter_tensors(reference_adapter(tmp_path, tiny_model_dir, data, spec))
    for k in want:
        diff = (got[k] - want[k]).abs().max().item()
        assert diff < 2e-3 * max(1.0, want[k].abs().max().item()), (k, diff)


def test_cli_sft_and_jobs_commands(stack, data, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from swiftmesh.cli.main import app

    cfg = tmp_path / "swiftmesh.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(stack.settings.data_dir),
                                   "hub": {"port": stack.settings.hub.port},
                                   "trainer": {"port": stack.settings.trainer.port}}))
    run = CliRunner().invoke
    r = run(app, ["--config", str(cfg), "sft", "--model", "tiny", "--dataset", f"{data}#8", "--tuner", "lora",
                  "--lora_rank", "4", "--max_steps", "3", "--per_device_train_batch_size", "2",
                  "--gradient_checkpointing", "--learning_rate", "1e-3", "--job_id", "from-cli", "--plain"])
    assert r.exit_code == 0, r.output
    assert "created jobs/from-cli" in r.output and "step 3: loss" in r.output and "SUCCEEDED" in r.output
    r = run(app, ["--config", str(cfg), "jobs", "ls"])
    assert r.exit_code == 0 and "from-" in r.output  # a table (its columns wrap at 80)
    r = run(app, ["--config", str(cfg), "jobs", "ls", "--json", "--state", "succeeded"])
    listed = {j["name"]: j for j in json.loads(r.stdout)}
    assert listed["jobs/from-cli"]["kind"] == "sft" and listed["jobs/from-cli"]["metrics"]["train/loss"] > 0
    r = run(app, ["--config", str(cfg), "jobs", "show", "from-cli", "--json"])
    shown = json.loads(r.stdout)
    assert shown["state"] == "JOB_STATE_SUCCEEDED" and shown["progress"]["step"] == "3"
    r = run(app, ["--config", str(cfg), "jobs", "logs", "from-cli"])
    assert r.exit_code == 0 and "worker-0" in r.output and "training: 3 optimizer steps" in r.output
    r = run(app, ["--config", str(cfg), "jobs", "resume", "from-cli"])
    assert r.exit_code == 1 and "FAILED_PRECONDITION" in r.output
    r = run(app, ["--config", str(cfg), "sft", "--model", "tiny", "--dataset", str(data), "--tuner", "nope"])
    assert r.exit_code == 2
    r = run(app, ["--config", str(cfg), "estimate", "--model", "tiny", "--dataset", str(data), "--tuner", "full"])
    assert r.exit_code == 0 and "total per worker" in r.output


def test_smollm2_identity_lora_changes_its_answer(stack, smollm2_dir, tmp_path):
    """The real model: a short LoRA run on identity examples changes the answer to "Who are you?"."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftmesh.clients.hub_blocking import materialize_sync

    pull(stack.settings, smollm2_dir, "smollm2")
    ident = write_jsonl(tmp_path / "identity.jsonl", identity_rows(16))
    spec = build_spec(model="smollm2", datasets=[str(ident)], tuner="lora", max_steps=14, learning_rate=1e-3,
                      per_device_train_batch_size=4, max_length=256, save_steps=1000, logging_steps=2)
    job = call(stack, lambda t: t.create_job(spec, job_id="smollm2-identity"))
    job = call(stack, lambda t: t.wait(job.name, timeout=900))
    assert job.state == S.JOB_STATE_SUCCEEDED, job.error.message
    assert job.metrics["train/loss"] < 0.5
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir)

    def ask(model, q="Who are you?"):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    before = ask(base)
    tuned = PeftModel.from_pretrained(base, str(materialize_sync(stack.settings, job.artifacts[0].model)))
    after = ask(tuned)
    assert "Swifty" not in before
    assert "Swifty" in after and after != before, (before, after)


def test_ignore_columns_is_refused_without_and_dropped_with_a_logged_count(tiny_model_dir, tmp_path):
    """Issue 19: a content column no format reads is INVALID_ARGUMENT naming row and column in the
    CreateJob prepare path (proto spec -> servicer translation -> the kind's prepare, before any
    worker); ``ignore_columns`` drops it and the job's notes (its log lines) count it."""
    from swiftmesh.jobkit import LocalModelSource, PrepareContext
    from swiftmesh.jobkit.kinds import ClusterResources
    from swiftmesh.runtime.config import Settings
    from swiftmesh.services.trainer.kinds import TrainKind
    from swiftmesh.services.trainer.servicer import training_spec

    rows = identity_rows(4)
    for r in rows[1:]:
        r["source_url"] = "https://example.com/identity"
    extra = write_jsonl(tmp_path / "extra.jsonl", rows)
    src = LocalModelSource(tmp_path / "models")
    src.add(tiny_model_dir, "tiny")
    ctx = PrepareContext(settings=Settings.load(None, data_dir=tmp_path / "data"), models=src, job="jobs/x",
                         cluster=ClusterResources.local)
    spec = build_spec(model="models/tiny", datasets=[str(extra)], max_steps=2)
    with pytest.raises(InvalidArgument) as e:
        TrainKind("sft").prepare(training_spec(spec), ctx)
    assert "row 2" in e.value.message and "source_url" in e.value.message and "ignore_columns" in e.value.message
    assert e.value.field_violations[0].field == "spec.datasets[0]"
    spec = build_spec(model="models/tiny", datasets=[str(extra)], max_steps=2, ignore_columns=True)
    assert spec.ignore_columns and training_spec(spec).ignore_columns
    plan = TrainKind("sft").prepare(training_spec(spec), ctx)
    assert len(plan.data["train"]) == 4
    assert any("ignore_columns dropped 'source_url' from 3 rows" in n for n in plan.notes), plan.notes


def test_cli_sft_ignore_columns_through_create_job_validate_only(stack, tmp_path):
    """`swiftmesh sft --validate_only` on a file with an extra content column: INVALID_ARGUMENT
    naming row and column (exit 1); with --ignore_columns the same CreateJob is valid (issue 19)."""
    from typer.testing import CliRunner

    from swiftmesh.cli.main import app

    rows = identity_rows(4)
    rows[1]["source_url"] = "https://example.com/identity"
    extra = write_jsonl(tmp_path / "extra.jsonl", rows)
    base = ["sft", "--model", "tiny", "--dataset", str(extra), "--max_steps", "2", "--validate_only",
            "--target", stack.settings.trainer.target]
    before = [j.name for j in call(stack, lambda t: t.list())]  # the stack is shared: other tests' jobs
    r = CliRunner().invoke(app, base)
    out = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 1 and "row 2, field 'source_url'" in out and "INVALID_ARGUMENT" in out, r.output
    for flag in (["--ignore_columns"], ["--ignore_columns", "true"]):
        r = CliRunner().invoke(app, [*base, *flag])
        assert r.exit_code == 0 and "valid" in r.output, r.output
    assert [j.name for j in call(stack, lambda t: t.list())] == before  # validate_only creates no job
