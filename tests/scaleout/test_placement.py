"""Placement and host identity without a cluster: the reason a job waits, placement strategies,
the host-identity override that makes a Ray node mirror models, and where it mirrors them."""

from __future__ import annotations

import pytest

from swiftmesh.clients import hub as hub_client
from swiftmesh.jobkit.kinds import JobPlan
from swiftmesh.jobkit.models import mirror_root
from swiftmesh.jobkit.placement import (
    PLACEMENT_STRATEGIES,
    placeable,
    placement_strategy,
    waiting_reason,
    worker_bundle,
)
from swiftmesh.runtime.errors import InvalidArgument

GIB = 1 << 30


def test_waiting_reason_strict_spread_counts_nodes_not_cpus():
    one_node = {"head": {"CPU": 1.0}}
    msg = waiting_reason(2, worker_bundle(1), "STRICT_SPREAD", one_node)
    assert msg == ("waiting for 2 workers x 1 CPU, each on its own node (STRICT_SPREAD); the cluster has 1 CPU free; "
                   "1 of 1 node can take a worker now (the cluster's 1 node cannot hold the job even when idle: "
                   "it starts once nodes with room join)")
    # Two CPUs on one node are still one node; PACK would place both there.
    assert waiting_reason(2, worker_bundle(1), "STRICT_SPREAD", {"head": {"CPU": 2.0}}) is not None
    assert waiting_reason(2, worker_bundle(1), "PACK", {"head": {"CPU": 2.0}}) is None
    assert waiting_reason(2, worker_bundle(1), "STRICT_SPREAD", {"a": {"CPU": 1.0}, "b": {"CPU": 1.0}}) is None


def test_waiting_reason_busy_cluster_vs_too_small_cluster():
    total = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}}
    busy = {"a": {"CPU": 0.0}, "b": {"CPU": 1.0}}
    msg = waiting_reason(2, worker_bundle(1), "PACK", busy, total)
    assert msg == "waiting for 2 workers x 1 CPU; the cluster has 1 CPU free; 1 of 2 nodes can take a worker now"
    # More CPUs than any node has: the cluster cannot hold it even idle.
    msg = waiting_reason(1, worker_bundle(3), "PACK", total, total)
    assert msg.startswith("waiting for 1 worker x 3 CPUs; the cluster has 4 CPUs free; 0 of 2 nodes")
    assert "cannot hold the job even when idle" in msg


def test_waiting_reason_counts_gpus_and_memory_per_node():
    free = {"a": {"CPU": 8.0, "GPU": 1.0, "memory": 16 * GIB}, "b": {"CPU": 8.0, "GPU": 0.0, "memory": 64 * GIB}}
    b = worker_bundle(2, 1, 24 * GIB)
    assert placeable(b, "PACK", free) == 0  # a lacks memory, b lacks a GPU
    msg = waiting_reason(1, b, "PACK", free)
    assert msg.startswith("waiting for 1 worker x 2 CPUs, 1 GPU, 24.0 GiB memory; the cluster has 16 CPUs, 1 GPU, "
                          "80.0 GiB memory free; 0 of 2 nodes")
    assert placeable(worker_bundle(2, 1, 8 * GIB), "PACK", free) == 1
    assert placeable(worker_bundle(1), "STRICT_PACK", free) == 8


def test_placement_strategy_names_and_errors():
    assert placement_strategy("") == "PACK"
    assert placement_strategy("strict-spread") == "STRICT_SPREAD"
    assert placement_strategy(" Spread ") == "SPREAD"
    assert set(PLACEMENT_STRATEGIES) == {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}
    with pytest.raises(InvalidArgument) as e:
        placement_strategy("diagonal")
    assert e.value.field_violations[0].field == "labels[swiftmesh.io/placement-strategy]"
    assert "STRICT_SPREAD" in e.value.message
    with pytest.raises(InvalidArgument, match="cpus_per_worker"):
        worker_bundle(-1)
    assert worker_bundle(1.5, 0, 0) == {"CPU": 1.5}
    assert worker_bundle(1, 2, 1024) == {"CPU": 1.0, "GPU": 2.0, "memory": 1024.0}


def test_plan_keeps_its_placement_strategy_and_reads_old_plans():
    plan = JobPlan(config={"a": 1}, num_workers=2, placement_strategy="STRICT_SPREAD")
    assert JobPlan.from_json(plan.to_json()).placement_strategy == "STRICT_SPREAD"
    old = plan.to_json()
    del old["placement_strategy"]  # a plan stored before the field existed
    assert JobPlan.from_json(old).placement_strategy == "PACK"


def test_machine_id_override_makes_the_hub_cache_foreign(monkeypatch, tmp_path):
    from swiftmesh.hub.v1 import hub_pb2

    monkeypatch.delenv(hub_client.MACHINE_ID_ENV, raising=False)
    real = hub_client.machine_id()
    (tmp_path / "w.bin").write_bytes(b"abc")
    model = hub_pb2.Model(name="models/x", files=[hub_pb2.ModelFile(path="w.bin", size_bytes=3)])
    model.location.host_id = f"{real}|cache1"
    model.location.path = str(tmp_path)
    assert hub_client.same_host(model)
    monkeypatch.setenv(hub_client.MACHINE_ID_ENV, "ray-node-7")
    assert hub_client.machine_id() == "ray-node-7"
    assert not hub_client.same_host(model)
    monkeypatch.setenv(hub_client.MACHINE_ID_ENV, "   ")
    assert hub_client.machine_id() == real
    monkeypatch.setenv(hub_client.MACHINE_ID_ENV, "a|b")
    with pytest.raises(InvalidArgument, match="must not contain"):
        hub_client.machine_id()


def test_mirror_root_is_the_nodes_own_data_dir(monkeypatch, tmp_path, make_settings):
    settings = make_settings()
    monkeypatch.delenv("SWIFTMESH_DATA_DIR", raising=False)
    assert mirror_root(settings) == settings.data_dir / "mirror"
    monkeypatch.setenv("SWIFTMESH_DATA_DIR", str(tmp_path / "node"))
    assert mirror_root(settings) == tmp_path / "node" / "mirror"
