"""The job store on the shared database layer: jobs.db files of the two earlier versions adopted
in place (JSON records without a service column; serialized protos), and PostgreSQL shared by
the trainer's and the aligner's stores. No Ray."""

from __future__ import annotations

import pytest

from swiftmesh.jobkit import states
from swiftmesh.jobkit.store import JobStore
from swiftmesh.jobkit.types import Checkpoint, Job, JobEvent, LogLine, StateChange, now
from swiftmesh.runtime.errors import AlreadyExists, FailedPrecondition, NotFound
from swiftmesh.runtime.sqlite import connect

# The schema of the version before the database layer (runtime.sqlite, no service column).
V1_SCHEMA = """
CREATE TABLE job_records (name TEXT PRIMARY KEY, uid TEXT NOT NULL, kind TEXT NOT NULL, state INTEGER NOT NULL,
    create_time REAL NOT NULL, record TEXT NOT NULL, plan TEXT);
CREATE INDEX job_records_by_time ON job_records(create_time DESC);
CREATE TABLE job_events (job TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (job, seq));
"""
# ... and of the version before that (serialized protos).
V0_SCHEMA = """
CREATE TABLE jobs (name TEXT PRIMARY KEY, uid TEXT NOT NULL, kind TEXT NOT NULL, state INTEGER NOT NULL,
    create_time REAL NOT NULL, proto BLOB NOT NULL, plan TEXT);
CREATE INDEX jobs_by_time ON jobs(create_time DESC);
CREATE TABLE events (job TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, proto BLOB NOT NULL,
    PRIMARY KEY (job, seq));
"""


def _job(name: str, kind: str = "sft", state=states.QUEUED, **kw) -> Job:
    return Job(name=name, uid=name, kind=kind, state=state, create_time=now(), **kw)


def test_jobs_db_of_the_previous_version_is_adopted_in_place(tmp_path):
    import json

    db = connect(tmp_path / "jobs.db")
    db.executescript(V1_SCHEMA)
    old = _job("jobs/old", state=states.SUCCEEDED, checkpoints=[Checkpoint(step=4, path="/x/checkpoint-4")])
    db.execute("INSERT INTO job_records VALUES (?,?,?,?,?,?,?)",
               (old.name, old.uid, old.kind, int(old.state), old.create_time, json.dumps(old.to_json()), '{"p": 1}'))
    for seq, msg in ((1, "one"), (2, "two")):
        ev = JobEvent(job=old.name, sequence=seq, time=now(), log=LogLine(message=msg))
        db.execute("INSERT INTO job_events VALUES (?,?,?,?)", (old.name, seq, ev.time, json.dumps(ev.to_json())))
    db.close()

    s = JobStore(tmp_path / "jobs.db", "trainer")
    assert [j.name for j in s.list()] == ["jobs/old"]
    got = s.get("jobs/old")
    assert got.state == states.SUCCEEDED and got.last_checkpoint_step == 4
    assert s.plan("jobs/old") == '{"p": 1}'
    assert [e.log.message for e in s.events("jobs/old")] == ["one", "two"]
    # New events continue the numbering; a second open changes nothing.
    assert s.append_event(JobEvent(job="jobs/old", log=LogLine(message="three"))).sequence == 3
    s.close()
    s2 = JobStore(tmp_path / "jobs.db", "trainer")
    assert [e.sequence for e in s2.events("jobs/old")] == [1, 2, 3]
    s2.close()


def test_job_history_of_proto_stores_is_migrated(tmp_path):
    from google.protobuf import timestamp_pb2

    from swiftmesh.jobs.v1 import jobs_pb2
    from swiftmesh.services.trainer.servicer import SPEC
    from swiftmesh.trainer.v1 import trainer_pb2

    spec = trainer_pb2.TrainingSpec(task=trainer_pb2.TASK_SFT, model="models/tiny", datasets=["d.jsonl"])
    spec.args.max_steps = 16
    created = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    pb = jobs_pb2.Job(name="jobs/sft-old", uid="u1", kind="sft", state=jobs_pb2.JOB_STATE_SUCCEEDED,
                      state_message="succeeded", attempt=2, labels={"team": "a"},
                      checkpoints=[jobs_pb2.Checkpoint(step=8, path="/c/checkpoint-8")],
                      artifacts=[jobs_pb2.JobArtifact(model="models/tiny-sft", kind="adapter")],
                      progress=jobs_pb2.JobProgress(step=16, total_steps=16, fraction=1.0),
                      metrics={"train/loss": 0.5}, create_time=created)
    pb.spec.Pack(spec)
    events = [
        jobs_pb2.JobEvent(job=pb.name, sequence=1, state_change=jobs_pb2.StateChange(
            state=jobs_pb2.JOB_STATE_QUEUED, message="queued")),
        jobs_pb2.JobEvent(job=pb.name, sequence=2, log=jobs_pb2.LogLine(level="INFO", message="hello", source="worker-0")),
        jobs_pb2.JobEvent(job=pb.name, sequence=3, checkpoint=jobs_pb2.CheckpointSaved(
            checkpoint=jobs_pb2.Checkpoint(step=8, path="/c/checkpoint-8"))),
        jobs_pb2.JobEvent(job=pb.name, sequence=4, artifact=jobs_pb2.JobArtifact(model="models/tiny-sft", kind="adapter")),
    ]
    db = connect(tmp_path / "jobs.db")
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)",
               (pb.name, pb.uid, pb.kind, pb.state, 1_700_000_000.0, pb.SerializeToString(), None))
    for ev in events:
        db.execute("INSERT INTO events VALUES (?,?,?,?)", (ev.job, ev.sequence, 1_700_000_001.0, ev.SerializeToString()))
    db.close()

    s = JobStore(tmp_path / "jobs.db", "trainer")
    (job,) = s.list()
    assert (job.name, job.kind, job.state, job.attempt, job.labels) == ("jobs/sft-old", "sft", states.SUCCEEDED, 2,
                                                                        {"team": "a"})
    assert job.create_time == 1_700_000_000.0 and job.progress.step == 16 and job.metrics == {"train/loss": 0.5}
    assert [(c.step, c.path) for c in job.checkpoints] == [(8, "/c/checkpoint-8")]
    assert [a.model for a in job.artifacts] == ["models/tiny-sft"]
    # The spec is the domain spec's JSON again: GetJob packs the same TrainingSpec.
    back = SPEC.job_spec(job.kind, job.spec)
    assert (back.task, back.model, list(back.datasets), back.args.max_steps) == (
        trainer_pb2.TASK_SFT, "models/tiny", ["d.jsonl"], 16)
    evs = s.events(job.name)
    assert [e.sequence for e in evs] == [1, 2, 3, 4]
    assert evs[0].state_change.state == states.QUEUED and evs[1].log.message == "hello"
    assert evs[2].checkpoint.step == 8 and evs[3].artifact.model == "models/tiny-sft"
    s.close()


def _shared_store_checks(url: str) -> None:
    trainer, aligner = JobStore(url, "trainer"), JobStore(url, "aligner")
    trainer.insert(_job("jobs/a"), plan='{"x": 1}', event=JobEvent(job="jobs/a", state_change=StateChange(
        state=states.QUEUED)))
    aligner.insert(_job("jobs/a", kind="dpo"))  # the same name in another service's store
    with pytest.raises(AlreadyExists):
        trainer.insert(_job("jobs/a"))
    assert [j.kind for j in trainer.list()] == ["sft"] and [j.kind for j in aligner.list()] == ["dpo"]

    def refuse(j):
        j.state = states.RUNNING
        states.check_transition(j.name, states.SUCCEEDED, states.RUNNING)

    with pytest.raises(FailedPrecondition):
        trainer.update("jobs/a", refuse, JobEvent(job="jobs/a", log=LogLine(message="never")))
    assert trainer.get("jobs/a").state == states.QUEUED and len(trainer.events("jobs/a")) == 1
    _, ev = trainer.update("jobs/a", lambda j: setattr(j, "state", states.RUNNING),
                             lambda j: JobEvent(job=j.name, state_change=StateChange(state=j.state)))
    assert ev.sequence == 2 and aligner.events("jobs/a") == []
    trainer.close()
    again = JobStore(url, "trainer")  # a restarted service sees everything
    assert again.get("jobs/a").state == states.RUNNING and again.plan("jobs/a") == '{"x": 1}'
    assert [j.name for j in again.list(states=[states.RUNNING])] == ["jobs/a"]
    again.delete("jobs/a")
    with pytest.raises(NotFound):
        again.get("jobs/a")
    assert aligner.get("jobs/a").kind == "dpo"
    again.close()
    aligner.close()


def test_trainer_and_aligner_share_one_sqlite_database(tmp_path):
    _shared_store_checks(f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    from swiftmesh.testing.servers import postgres_server

    try:
        server = postgres_server(tmp_path_factory.mktemp("pg"))
        url = server.__enter__()
    except FileNotFoundError as e:
        pytest.skip(f"PostgreSQL is not installed: {e}")
    yield url
    server.__exit__(None, None, None)


def test_trainer_and_aligner_share_one_postgresql(postgres):
    _shared_store_checks(postgres)


async def test_managers_use_the_database_url_of_their_section(make_settings, tmp_path, postgres):
    from swiftmesh.jobkit import JobManager, LocalModelSource
    from swiftmesh.jobkit.ray_runtime import RayRuntime
    from swiftmesh.jobkit.testing import ToyKind

    settings = make_settings(trainer={"database_url": postgres}, aligner={"database_url": postgres})
    managers = [JobManager(settings, svc, [ToyKind()], models=LocalModelSource(tmp_path / "m"), runtime=RayRuntime())
                for svc in ("trainer", "aligner")]
    for m in managers:  # Ray is not started: the store alone
        assert m.store.url == postgres
        m._persist_new(_job("jobs/same-name", kind="toy"), ToyKind().prepare({"steps": 2}, None))
    assert [(await m.get("jobs/same-name")).name for m in managers] == ["jobs/same-name"] * 2
    assert not (settings.trainer_state_dir / "jobs.db").exists()
    for m in managers:
        m.store.delete("jobs/same-name")
        m.store.close()
    # The default stays SQLite under the state directory.
    local = JobManager(make_settings(), "trainer", [ToyKind()], models=LocalModelSource(tmp_path / "m"),
                       runtime=RayRuntime())
    assert local.store.url.startswith("sqlite:///") and local.store.url.endswith("/trainer/jobs.db")
    local.store.close()
