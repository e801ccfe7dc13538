"""jobkit store, state machine and event fan-out (no Ray)."""

from __future__ import annotations

import asyncio

import pytest

from swiftmesh.jobkit import states
from swiftmesh.jobkit.events import EventHub
from swiftmesh.jobkit.store import JobStore
from swiftmesh.jobkit.types import Job, JobEvent, LogLine, StateChange, now
from swiftmesh.runtime.errors import AlreadyExists, FailedPrecondition, NotFound


def _job(name: str, kind: str = "sft", state=states.QUEUED) -> Job:
    return Job(name=name, uid=name, kind=kind, state=state, create_time=now())


def test_store_roundtrip_and_persistence(tmp_path):
    db = tmp_path / "jobs.db"
    s = JobStore(db)
    s.insert(_job("jobs/a"), plan='{"x": 1}')
    s.insert(_job("jobs/b", kind="dpo"))
    with pytest.raises(AlreadyExists):
        s.insert(_job("jobs/a"))
    s.update("jobs/a", lambda j: setattr(j, "state", states.RUNNING))
    s.append_event(JobEvent(job="jobs/a", log=LogLine(message="one")))
    s.append_event(JobEvent(job="jobs/a", log=LogLine(message="two")))
    s.close()
    s2 = JobStore(db)  # a restarted service sees everything
    assert s2.get("jobs/a").state == states.RUNNING
    assert s2.plan("jobs/a") == '{"x": 1}'
    assert [j.name for j in s2.list(kinds=["dpo"])] == ["jobs/b"]
    assert [j.name for j in s2.list(states=[states.RUNNING])] == ["jobs/a"]
    evs = s2.events("jobs/a")
    assert [(e.sequence, e.log.message) for e in evs] == [(1, "one"), (2, "two")]
    assert [e.sequence for e in s2.events("jobs/a", start_sequence=2)] == [2]
    s2.delete("jobs/a")
    with pytest.raises(NotFound):
        s2.get("jobs/a")
    assert s2.events("jobs/a") == []


def test_update_writes_the_change_and_its_event_in_one_transaction(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    s.insert(_job("jobs/t"), event=JobEvent(job="jobs/t", state_change=StateChange(state=states.QUEUED)))

    def refuse(j):
        j.state = states.RUNNING
        states.check_transition(j.name, states.SUCCEEDED, states.RUNNING)

    with pytest.raises(FailedPrecondition):
        s.update("jobs/t", refuse, JobEvent(job="jobs/t", log=LogLine(message="never")))
    assert s.get("jobs/t").state == states.QUEUED and len(s.events("jobs/t")) == 1  # neither was written
    job, ev = s.update("jobs/t", lambda j: setattr(j, "state", states.RUNNING),
                       lambda j: JobEvent(job=j.name, state_change=StateChange(state=j.state)))
    assert job.state == states.RUNNING and ev.sequence == 2
    assert s.events("jobs/t")[-1].state_change.state == states.RUNNING


def test_state_machine():
    assert states.can_transition(states.QUEUED, states.RUNNING)
    assert states.can_transition(states.FAILED, states.QUEUED)
    assert states.can_transition(states.CANCELLED, states.QUEUED)
    assert not states.can_transition(states.SUCCEEDED, states.QUEUED)
    assert states.can_transition(states.RUNNING, states.QUEUED)  # resumed on its own after a crash
    assert not states.can_transition(states.QUEUED, states.SUCCEEDED)
    with pytest.raises(FailedPrecondition, match="SUCCEEDED"):
        states.check_transition("jobs/x", states.SUCCEEDED, states.RUNNING)


async def test_watch_replays_then_follows_until_terminal(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.insert(_job("jobs/w"))
    hub = EventHub(store)
    hub.publish(JobEvent(job="jobs/w", log=LogLine(message="early")))
    terminal = {"v": False}
    got: list[JobEvent] = []

    async def consume():
        async for ev in hub.watch("jobs/w", start_sequence=1, follow=True, is_terminal=lambda: terminal["v"]):
            got.append(ev)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)

    def produce():
        for i in range(5):
            hub.publish(JobEvent(job="jobs/w", log=LogLine(message=f"live {i}")))
        terminal["v"] = True
        hub.publish(JobEvent(job="jobs/w", state_change=StateChange(state=states.SUCCEEDED)))

    await asyncio.to_thread(produce)
    await asyncio.wait_for(task, 10)
    assert [e.sequence for e in got] == list(range(1, 8))
    assert got[0].log.message == "early" and got[-1].state_change.state == states.SUCCEEDED
    # History only, from a sequence.
    hist = [e async for e in hub.watch("jobs/w", start_sequence=6, follow=False)]
    assert [e.sequence for e in hist] == [6, 7]
