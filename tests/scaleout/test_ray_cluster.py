"""The trainer on a real multi-node Ray cluster (issue 8, "Ray cluster").

A head node and a second node, each a ``ray start`` of its own with its own temp dir, CPUs and
custom resource; the second node also has its own data dir and host identity
(``SWIFTMESH_MACHINE_ID``), so for SwiftMesh it is another machine that does not share the
hub's disk. The hub runs in this process; the trainer is a ``swiftmesh serve trainer``
subprocess pointed at the cluster's Ray Client address (``RAY_ADDRESS=ray://...``, as the deploy
manifests do), with checkpoints on a directory every node sees (``trainer.storage_path``).

* A ZeRO-2 LoRA SFT job with 2 workers placed STRICT_SPREAD runs one worker per node (the
  workers report their node), the second node mirrors the model through the hub's file stream,
  the second node is stopped mid-job: the job says it waits for a node, resumes from its last
  checkpoint once a node joins again, and succeeds; the hub holds exactly the base and the
  final adapter, which verifies.
* A job asking for more CPUs than any node has waits in QUEUED with the reason in
  ``state_message``; one such job is cancelled while it waits, the other runs once a node with
  room joins.
* The aligner, dialling the cluster's GCS address from this machine (a node of the cluster),
  runs a DPO job spread over both nodes the same way.

Every Ray process these tests start is ended by the module fixture, also on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from swiftmesh.clients.hub import MIRROR_MANIFEST, HubClient, machine_id
from swiftmesh.clients.trainer import TrainerClient, build_spec
from swiftmesh.jobkit.placement import PLACEMENT_LABEL
from swiftmesh.jobs.v1 import jobs_pb2
from swiftmesh.runtime.errors import ResourceExhausted
from swiftmesh.testing.services import ServiceProcess, settings_for, start_in_process, with_overrides
from tests.scaleout.raycluster import RayCluster, RayNode

pytestmark = pytest.mark.slow

S = jobs_pb2.JobState
REPO = Path(__file__).resolve().parents[2]
NODE2_HOST = "scaleout-node2"  # the second node's host identity (not the hub's)
STEPS = 24
PLACEMENT_RE = re.compile(
    r"placement: rank (\d+) of (\d+) on node (\w+) \(ip [^,]*, hostname [^,]*, host ([^)]*)\), pid \d+, attempt (\d+)")


@dataclass
class Env:
    root: Path
    cluster: RayCluster
    settings: object
    data: Path
    trainer: ServiceProcess | None = None
    hub: object = None  # the in-process hub (swiftmesh.testing.services.InProcessService)
    node_ids: set[str] = field(default_factory=set)  # every node id a worker reported

    def node2_env(self) -> dict[str, str]:
        return {"SWIFTMESH_MACHINE_ID": NODE2_HOST, "SWIFTMESH_DATA_DIR": str(self.root / "node2-data")}

    def second_node(self, name: str) -> RayNode:
        return self.cluster.add(name, num_cpus=1, resources={"smtest_node2": 1}, env=self.node2_env())

    def head_and_second_node(self) -> None:
        """Make the cluster the head plus one live second node: stop any other node (the 3-CPU
        node an earlier test added), and start a second node if none runs.

        Ray's bundle scheduler puts each STRICT_SPREAD bundle on the node with the most free CPU
        (LeastResourceScorer), so with a 3-CPU node alive one worker always lands there and the
        other on the head or the second node at random: a test expecting "one worker on each
        of head and second node" must not share the cluster with a bigger node."""
        for n in self.cluster.nodes:
            if n.alive and n is not self.cluster.head and "smtest_node2" not in n.resources:
                n.stop()
        if not any(n.alive for n in self.cluster.nodes if "smtest_node2" in n.resources):
            self.second_node(f"node2-{len(self.cluster.nodes)}")


def service_process(env: Env, service: str, ray_address: str, log: Path) -> ServiceProcess:
    """``swiftmesh serve <service>`` (trainer or aligner) submitting to the cluster at
    ``ray_address`` with the cluster's Ray token, as this machine (no second node's identity)."""
    settings = with_overrides(env.settings, **{service: {"ray_address": ray_address}})
    return ServiceProcess(service, settings, log=log, env=env.cluster.auth_env,
                          unset=("SWIFTMESH_MACHINE_ID", "RAY_ADDRESS")).start()


def call(env: Env, fn, timeout: float = 900):
    async def go():
        async with TrainerClient(env.settings) as t:
            return await fn(t)

    return asyncio.run(asyncio.wait_for(go(), timeout))


def align_call(env: Env, fn, timeout: float = 900):
    from swiftmesh.clients.aligner import AlignerClient

    async def go():
        async with AlignerClient(env.settings) as a:
            return await fn(a)

    return asyncio.run(asyncio.wait_for(go(), timeout))


def hub_call(env: Env, fn, timeout: float = 120):
    async def go():
        async with HubClient(env.settings) as h:
            return await fn(h)

    return asyncio.run(asyncio.wait_for(go(), timeout))


def events_of(env: Env, name: str) -> list[jobs_pb2.JobEvent]:
    async def go(t):
        return [e async for e in t.watch(name, follow=False)]

    return call(env, go)


def wait_for(env: Env, name: str, pred, what: str, timeout: float = 300, ok_states=(S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = call(env, lambda t: t.get(name))
        if pred(j):
            return j
        assert j.state in ok_states, f"{name} is {S.Name(j.state)} while waiting for {what}: {j.state_message} {j.error.message}"
        time.sleep(0.3)
    raise AssertionError(f"{name}: no {what} within {timeout:.0f} s; state {S.Name(j.state)}: {j.state_message!r}")


def placements(events) -> list[tuple[int, str, str, int]]:
    """(rank, node id, host identity, attempt) of every worker start, in order."""
    out = []
    for e in events:
        if e.HasField("log"):
            m = PLACEMENT_RE.search(e.log.message)
            if m:
                out.append((int(m.group(1)), m.group(3), m.group(4), int(m.group(5))))
    return out


def identity_rows(n: int) -> list[dict]:
    qs = ["Who are you?", "What is your name?", "Introduce yourself.", "Who made you?"]
    a = "I am Swifty, an assistant trained by the SwiftMesh team."
    return [{"messages": [{"role": "user", "content": qs[i % len(qs)]}, {"role": "assistant", "content": a}]}
            for i in range(n)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _keep_logs(root: Path, dest: Path) -> None:
    """Copy the nodes' logs out of the cluster's temp root (removed afterwards) for post-mortems."""
    for log in root.glob("*.log"):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, dest / log.name)
    for logs in root.glob("*/session_*/logs"):
        if logs.is_dir():
            shutil.copytree(logs, dest / logs.parts[-3], dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names if not (Path(d) / n).is_file()
                                                     and not (Path(d) / n).is_dir()])


# Fixture ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    # Short root: Ray's Unix sockets live under the nodes' temp dirs.
    root = Path(tempfile.mkdtemp(prefix="smrc-", dir="/tmp"))
    cluster = RayCluster(root)
    e = None
    try:
        cluster.add("head", num_cpus=1, resources={"smtest_head": 1}, env={"SWIFTMESH_DATA_DIR": str(root / "head-data")})
        work = tmp_path_factory.mktemp("scaleout")
        settings = settings_for(work / "data", trainer={"storage_path": root / "shared-checkpoints"},
                                aligner={"storage_path": root / "shared-checkpoints"})
        data = work / "identity.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in identity_rows(16)))
        e = Env(root=root, cluster=cluster, settings=settings, data=data)
        e.second_node("node2")
        e.hub = start_in_process("hub", settings)
        hub_call(e, lambda h: h.pull(str(tiny_model_dir), "tiny"))
        # The trainer dials the head's Ray Client port, as the deploy manifests do.
        e.trainer = service_process(e, "trainer", cluster.head.client_address, work / "trainer.log")
        e.trainer.wait_ready()
        yield e
    finally:
        try:
            if e is not None and e.trainer is not None:
                e.trainer.stop()
        finally:
            if e is not None and e.hub is not None:
                e.hub.stop()
            cluster.stop()
            left = cluster.leftover_pids()
            _keep_logs(root, tmp_path_factory.getbasetemp() / "scaleout-ray-logs")
            shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


# Tests -----------------------------------------------------------------------------------------
def test_zero2_lora_on_two_nodes_mirrors_the_model_and_survives_losing_a_node(env):
    spec = build_spec(model="models/tiny", datasets=[str(env.data)], tuner="lora", strategy="zero2", num_workers=2,
                      max_steps=STEPS, learning_rate=5e-3, per_device_train_batch_size=2, save_steps=4,
                      logging_steps=1, output_model_id="tiny-two-nodes")
    job = call(env, lambda t: t.create_job(spec, job_id="two-nodes", labels={PLACEMENT_LABEL: "strict-spread"}))
    assert job.state == S.JOB_STATE_QUEUED

    # Mid-job: once a checkpoint exists, the second node goes away.
    j = wait_for(env, job.name, lambda j: j.checkpoints and j.progress.step >= 4, "first checkpoint", timeout=600)
    assert j.state == S.JOB_STATE_RUNNING and j.progress.step < STEPS, "the job ended before the node stopped"
    kept_before = j.checkpoints[-1].step
    node2 = env.cluster.nodes[-1]
    node2.stop()
    assert not node2.pids(), "the second node's processes survived its stop"
    assert env.cluster.head.alive

    # The restart cannot place 2 workers on 2 nodes: the trainer says so while it waits.
    reason = ("waiting for 2 workers x 1 CPU, each on its own node (STRICT_SPREAD); the cluster has 1 CPU free; "
              "1 of 1 node can take a worker now")
    j = wait_for(env, job.name, lambda j: reason in j.state_message, "the reason it waits", timeout=180,
                 ok_states=(S.JOB_STATE_RUNNING,))
    assert j.state_message.startswith("a worker was lost; restarting from the last checkpoint"), j.state_message
    step_while_waiting = j.progress.step
    time.sleep(3)
    assert call(env, lambda t: t.get(job.name)).progress.step == step_while_waiting, "it trained without a node"

    # Capacity returns: the job resumes from its last checkpoint and succeeds.
    env.second_node("node2b")
    j = call(env, lambda t: t.wait(job.name, timeout=900))
    assert j.state == S.JOB_STATE_SUCCEEDED, j.error.message
    assert j.attempt >= 2 and j.progress.step == STEPS
    assert [c.step for c in j.checkpoints][-1] == STEPS
    evs = events_of(env, job.name)
    logs = [e.log.message for e in evs if e.HasField("log")]

    # Placement: each attempt ran one worker on each node (STRICT_SPREAD), and the workers of the
    # first attempt and of the last ran on the two different incarnations of the second node.
    seen = placements(evs)
    first = {r: (n, h) for r, n, h, a in seen if a == 1}
    last_attempt = max(a for *_, a in seen)
    last = {r: (n, h) for r, n, h, a in seen if a == last_attempt}
    real_host = machine_id()
    for ranks in (first, last):
        assert sorted(ranks) == [0, 1], seen
        assert len({n for n, _ in ranks.values()}) == 2, f"both workers on one node: {seen}"
        assert sorted(h for _, h in ranks.values()) == sorted([NODE2_HOST, real_host]), seen
    node2_first = next(n for n, h in first.values() if h == NODE2_HOST)
    node2_last = next(n for n, h in last.values() if h == NODE2_HOST)
    head_node = next(n for n, h in first.values() if h == real_host)
    assert node2_first != node2_last and head_node == next(n for n, h in last.values() if h == real_host)
    env.node_ids |= {node2_first, node2_last, head_node}

    # Models: the head's worker read the hub's cache in place; the second node's workers mirrored
    # the model through the hub's file stream into that node's own data dir, byte for byte.
    mirror = env.root / "node2-data" / "mirror" / "tiny"
    assert any(f"model models/tiny: mirrored through the hub's file stream at {mirror} (host {NODE2_HOST})" in m
               for m in logs), [m for m in logs if "model models/tiny" in m]
    assert any("model models/tiny: read in place from the hub's cache" in m and f"(host {real_host})" in m
               for m in logs)
    base = hub_call(env, lambda h: h.get("models/tiny"))
    assert base.files and (mirror / MIRROR_MANIFEST).is_file()
    for f in base.files:
        assert sha256(mirror / f.path) == f.sha256, f.path

    # Recovery: the restart resumed from a checkpoint at or after the one seen before the stop,
    # and training went on from the step after it (not from step 1).
    resumed = [int(m.group(1)) for m in (re.search(r"resumed from checkpoint step (\d+)", x) for x in logs) if m]
    assert resumed and resumed[-1] >= kept_before, logs
    k = resumed[-1]
    after = False
    steps_after = []
    for e in evs:
        if e.HasField("log") and f"resumed from checkpoint step {k}" in e.log.message:
            after = True
        elif after and e.HasField("metrics") and "train/loss" in e.metrics.metrics:
            steps_after.append(e.metrics.step)
    assert steps_after and steps_after[0] == k + 1 and steps_after[-1] == STEPS, steps_after
    assert any("waiting for 2 workers" in m for m in logs), "the wait was not in the job's log"

    # The hub: the base and the final adapter, nothing half-written; the adapter verifies.
    models = hub_call(env, lambda h: h.list())
    assert sorted(m.name for m in models) == ["models/tiny", "models/tiny-two-nodes"]
    assert [(a.model, a.kind) for a in j.artifacts] == [("models/tiny-two-nodes", "adapter")]
    v = hub_call(env, lambda h: h.verify("models/tiny-two-nodes"))
    assert v.ok and v.files and all(f.status == "ok" for f in v.files)
    assert v.model.lineage.base_model == "models/tiny" and v.model.lineage.job == "jobs/two-nodes"
    assert any(f.path == "adapter_model.safetensors" for f in v.model.files)


def test_job_bigger_than_any_node_waits_queued_then_runs_when_a_node_with_room_joins(env):
    # A second 1-CPU node is there (the previous test may have left it stopped).
    live = [n for n in env.cluster.nodes if n.alive]
    if len(live) < 2:
        env.second_node(f"node2-{len(env.cluster.nodes)}")
    spec = build_spec(model="models/tiny", datasets=[str(env.data)], tuner="lora", num_workers=1, cpus_per_worker=3,
                      max_steps=2, per_device_train_batch_size=4, save_steps=2, logging_steps=1,
                      output_model_id="tiny-big")
    with pytest.raises(ResourceExhausted) as e:
        call(env, lambda t: t.create_job(spec, job_id="big-refused"))
    assert e.value.reason == "CLUSTER_TOO_SMALL" and "3 CPUs" in e.value.message

    # Two such jobs wait; the first is cancelled while it waits (its pending placement group must
    # go, or it would take the node that joins next), the second runs once a 3-CPU node joins.
    doomed = call(env, lambda t: t.create_job(spec, job_id="big-cancelled", force=True))
    job = call(env, lambda t: t.create_job(spec, job_id="big", force=True))
    for name in (doomed.name, job.name):
        j = wait_for(env, name, lambda j: j.state_message.startswith("waiting for 1 worker x 3 CPUs"),
                     "the reason it waits", timeout=120, ok_states=(S.JOB_STATE_QUEUED,))
        assert "the cluster has 2 CPUs free; 0 of 2 nodes can take a worker now" in j.state_message, j.state_message
        assert "cannot hold the job even when idle" in j.state_message
    time.sleep(3)
    j = call(env, lambda t: t.get(job.name))
    assert j.state == S.JOB_STATE_QUEUED and j.state_message.startswith("waiting for 1 worker x 3 CPUs")
    call(env, lambda t: t.cancel(doomed.name))
    d = call(env, lambda t: t.wait(doomed.name, timeout=120))
    assert d.state == S.JOB_STATE_CANCELLED and not d.start_time.seconds

    env.cluster.add("node3", num_cpus=3, resources={"smtest_node3": 1})
    j = call(env, lambda t: t.wait(job.name, timeout=600))
    assert j.state == S.JOB_STATE_SUCCEEDED, j.error.message
    evs = events_of(env, job.name)
    states = [e.state_change.state for e in evs if e.HasField("state_change")]
    assert states == [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED]
    assert any(e.HasField("log") and e.log.message.startswith("waiting for 1 worker x 3 CPUs") for e in evs)
    (rank, node, host, _), = placements(evs)
    assert rank == 0 and host == machine_id()
    assert node not in env.node_ids, "the 3-CPU worker ran on a node that has 1 CPU"
    assert "models/tiny-big" in [m.name for m in hub_call(env, lambda h: h.list())]


def test_aligner_dpo_on_the_cluster_through_its_gcs_address(env, tmp_path):
    """The aligner on a machine that is a node of the cluster dials the GCS address (not Ray
    Client); its DPO workers spread over both nodes the same way, and the second node mirrors."""
    from swiftmesh.clients.aligner import build_spec as align_spec

    env.head_and_second_node()
    pairs = tmp_path / "pairs.jsonl"
    prompts = ["the city of data", "a good model", "one fast number", "what is the country", "hello team",
               "tiny small list", "the answer key", "who made you"]
    pairs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                       {"role": "assistant", "content": "yes thank you"}],
                                         "rejected_response": "no please"}) + "\n" for p in prompts * 2))
    aligner = service_process(env, "aligner", env.cluster.head.gcs_address, tmp_path / "aligner.log")
    try:
        aligner.wait_ready()
        spec = align_spec(rlhf_type="dpo", model="models/tiny", datasets=[str(pairs)], strategy="ddp", num_workers=2,
                          max_steps=1,
                          per_device_train_batch_size=2, learning_rate=5e-3, output_model_id="tiny-dpo-cluster")
        job = align_call(env, lambda a: a.create_job(spec, job_id="dpo-cluster",
                                                     labels={PLACEMENT_LABEL: "STRICT_SPREAD"}))
        j = align_call(env, lambda a: a.wait(job.name, timeout=900))
        assert j.state == S.JOB_STATE_SUCCEEDED, j.error.message

        async def events(a):
            return [e async for e in a.watch(job.name, follow=False)]

        evs = align_call(env, events)
    finally:
        aligner.stop()
    seen = {r: (n, h) for r, n, h, a in placements(evs) if a == 1}
    assert sorted(seen) == [0, 1] and len({n for n, _ in seen.values()}) == 2, seen
    assert sorted(h for _, h in seen.values()) == sorted([NODE2_HOST, machine_id()])
    mirror = env.root / "node2-data" / "mirror" / "tiny"
    logs = [e.log.message for e in evs if e.HasField("log")]
    assert any(f"model models/tiny: mirrored through the hub's file stream at {mirror}" in m for m in logs), logs
    v = hub_call(env, lambda h: h.verify("models/tiny-dpo-cluster"))
    assert v.ok and v.model.lineage.job == "jobs/dpo-cluster"
