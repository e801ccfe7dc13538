"""The SFT worker loop run directly (one process, no Ray) on the tiny llama: every tuner trains
(loss goes down), LoRA+/rsLoRA/DoRA get their PEFT settings, merging reproduces base + adapter."""

from __future__ import annotations

import pytest
from conftest import identity_rows, write_jsonl

from swiftmesh.clients.trainer import build_spec
from swiftmesh.jobkit import LocalModelSource, PrepareContext, WorkerContext
from swiftmesh.jobkit.kinds import ClusterResources
from swiftmesh.runtime.config import Settings
from swiftmesh.services.trainer.kinds import TrainKind, merge_adapter
from swiftmesh.services.trainer.servicer import training_spec


class _Sink:
    """Collects what the worker reports (stands in for the job's Ray event sink)."""

    def __init__(self):
        self.events = []
        outer = self

        class _Push:
            def remote(self, evs):
                outer.events.extend(evs)

        self.push = _Push()


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tuners")
    src = LocalModelSource(root / "models")
    src.add(tiny_model_dir, "tiny")
    data = write_jsonl(root / "identity.jsonl", identity_rows(16))
    settings = Settings.load(None, data_dir=root / "data")
    return root, src, data, settings


def run_direct(env, tuner, *, steps=8, lr=5e-3, **kw):
    root, src, data, settings = env
    spec = training_spec(build_spec(model="models/tiny", datasets=[str(data)], tuner=tuner, max_steps=steps,
                                    learning_rate=lr, per_device_train_batch_size=4, save_steps=1000, logging_steps=1,
                                    **kw))
    kind = TrainKind("sft")
    job = f"jobs/sft-{tuner.replace('+', 'p')}"
    plan = kind.prepare(spec, PrepareContext(settings=settings, models=src, job=job, cluster=ClusterResources.local))
    sink = _Sink()
    work = root / "work" / tuner.replace("+", "p")
    work.mkdir(parents=True, exist_ok=True)
    ctx = WorkerContext(job=job, rank=0, world_size=1, local_rank=0, config=plan.config, data=plan.data,
                        settings=settings, models=src, work_dir=work, _sink=sink)
    artifacts = kind.train(ctx)
    losses = [e["metrics"]["train/loss"] for e in sink.events if e["type"] == "metrics" and "train/loss" in e["metrics"]]
    return losses, artifacts, sink.events


@pytest.mark.parametrize("tuner", ["full", "lora", "qlora", "dora", "rslora", "lora+"])
def test_loss_decreases_for_every_tuner(env, tuner):
    steps = 6 if tuner == "qlora" else 8
    losses, artifacts, events = run_direct(env, tuner, steps=steps, lr=2e-3 if tuner == "full" else 5e-3)
    assert len(losses) == steps
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses
    (a,) = artifacts
    if tuner == "full":
        assert a.kind == "full" and (a.path / "config.json").is_file()
    else:
        import json

        cfg = json.loads((a.path / "adapter_config.json").read_text())
        assert a.kind == "adapter" and cfg["base_model_name_or_path"] == "tiny"
        assert cfg["use_dora"] is (tuner == "dora") and cfg["use_rslora"] is (tuner == "rslora")
        assert cfg["r"] == 8 and cfg["lora_alpha"] == 32
    logs = [e["message"] for e in events if e["type"] == "log"]
    if tuner == "qlora":
        assert any("4-bit NF4" in m for m in logs)


def test_lora_plus_gives_b_a_larger_learning_rate(tiny_model_dir):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from swiftmesh.jobkit import hf
    from swiftmesh.jobkit.settings import LoraSettings, Tuner

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           hf.lora_config(Tuner.LORA_PLUS, LoraSettings(r=4)))
    cls = hf.with_loraplus(Trainer, 16.0)
    tr = cls(model=model, args=TrainingArguments(output_dir="/tmp/lp", learning_rate=1e-4, use_cpu=True, report_to="none"))
    opt = tr.create_optimizer()
    lrs = {}
    for g in opt.param_groups:
        for p in g["params"]:
            for n, q in model.named_parameters():
                if q is p:
                    lrs[n] = g["lr"]
    a = [v for n, v in lrs.items() if "lora_A" in n]
    b = [v for n, v in lrs.items() if "lora_B" in n]
    assert a and b and set(a) == {1e-4}
    assert all(v == pytest.approx(1.6e-3) for v in b)
    assert isinstance(opt, torch.optim.AdamW)


def test_merge_reproduces_base_plus_adapter(env, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, artifacts, _ = run_direct(env, "lora", steps=4, lr=1e-2)
    adapter = artifacts[0].path
    merged = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 42, 77, 3]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        want = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


def test_spec_round_trips_through_the_proto_and_the_job_store_json():
    import json

    from swiftmesh.services.trainer.servicer import SPEC
    from swiftmesh.services.trainer.spec import TrainingSpec

    spec = training_spec(build_spec(model="models/tiny", task="pt", datasets=["d.jsonl"], tuner="qlora",
                                    strategy="zero2", num_workers=2, max_steps=5, bf16=False, r=16))
    assert spec.task == "pt" and spec.args.bf16 is False and spec.lora.r == 16 and spec.args.learning_rate is None
    again = TrainingSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and SPEC.from_proto(SPEC.to_proto(again)) == spec
