"""The helpers every JobKind shares: the output model id and the refusal of oversized jobs."""

from __future__ import annotations

import pytest

from swiftmesh.jobkit import LocalModelSource, PrepareContext
from swiftmesh.jobkit.estimate import Estimate
from swiftmesh.jobkit.kinds import refuse_oversized
from swiftmesh.jobkit.settings import TuningSpec
from swiftmesh.jobkit.testing import ToyKind
from swiftmesh.runtime.errors import AlreadyExists, ResourceExhausted


def test_output_model_id_default_explicit_and_taken(tmp_path, make_settings):
    models = LocalModelSource(tmp_path)
    ctx = PrepareContext(settings=make_settings(), models=models, job="jobs/toy-1a2b")
    kind = ToyKind()
    assert kind.output_model_id(TuningSpec(model="models/org/base"), ctx) == "org-base-toy-1a2b"
    ctx.job = "jobs/nightly"
    assert kind.output_model_id(TuningSpec(model="base"), ctx) == "base-toy-nightly"
    assert kind.output_model_id(TuningSpec(model="base", output_model_id="models/mine"), ctx) == "mine"
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.txt").write_text("x")
    models.upload(src, "mine", format="full")
    with pytest.raises(AlreadyExists) as e:
        kind.output_model_id(TuningSpec(model="base", output_model_id="mine"), ctx)
    assert e.value.reason == "MODEL_EXISTS" and e.value.field_violations[0].field == "spec.output_model_id"


def test_refuse_oversized_names_the_breakdown_unless_forced(tmp_path, make_settings):
    gib = 1 << 30
    e = Estimate(weights_bytes=2 * gib, gradients_bytes=gib, optimizer_states_bytes=4 * gib,
                 activations_bytes=gib, total_bytes_per_worker=8 * gib, available_bytes_per_worker=gib,
                 fits=False)
    ctx = PrepareContext(settings=make_settings(), models=LocalModelSource(tmp_path))
    with pytest.raises(ResourceExhausted) as err:
        refuse_oversized(e, ctx, "Use PEFT or force=true")
    msg = err.value.message
    assert "8.00 GiB per worker" in msg and "optimizer states 4.00 GiB" in msg and "Use PEFT" in msg, msg
    assert err.value.reason == "ESTIMATE_EXCEEDS_RESOURCES"
    assert err.value.metadata["needed_bytes"] == str(8 * gib)
    ctx.force = True
    refuse_oversized(e, ctx, "")  # forced: no error
    ctx.force = False
    e.fits = True
    refuse_oversized(e, ctx, "")
