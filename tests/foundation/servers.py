"""A small test service on the real runtime: HubService.GetModel sleeps for the number of
seconds in the model id ("models/sleep-1.5"), raises domain errors for "models/bad" and
"models/boom", and fails with UNAVAILABLE the first N times for "models/flaky-N"."""

from __future__ import annotations

import asyncio
import sys

from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import InvalidArgument, Unavailable
from swiftmesh.runtime.server import Service

SERVICE_NAME = "swiftmesh.hub.v1.HubService"


class SleepyHub(hub_pb2_grpc.HubServiceServicer):
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def GetModel(self, request, context):
        name = request.name
        self.calls[name] = self.calls.get(name, 0) + 1
        model_id = name.removeprefix("models/")
        if model_id.startswith("sleep-"):
            await asyncio.sleep(float(model_id.removeprefix("sleep-")))
        elif model_id == "bad":
            raise InvalidArgument(
                "model name is bad", reason="BAD_NAME", field_violations=[("name", "must not be 'bad'")]
            )
        elif model_id == "boom":
            raise RuntimeError("kaboom")
        elif model_id.startswith("flaky-"):
            if self.calls[name] <= int(model_id.removeprefix("flaky-")):
                raise Unavailable("try again")
        return hub_pb2.Model(name=name, size_bytes=self.calls[name])

    async def ListModels(self, request, context):
        return hub_pb2.ListModelsResponse()


def sleepy_service(settings: Settings) -> Service:
    service = Service("testhub", endpoint=settings.hub)
    service.add(SleepyHub(), hub_pb2_grpc.add_HubServiceServicer_to_server, SERVICE_NAME)
    return service


if __name__ == "__main__":  # run under runtime.server.serve, for the SIGTERM test
    from swiftmesh.runtime.server import serve

    port = int(sys.argv[1])
    grace = float(sys.argv[2])
    s = Settings.load(None, hub={"port": port, "metrics_port": 0}, shutdown_grace_s=grace)
    asyncio.run(serve(sleepy_service(s), s, ready=lambda r: print(f"ready {r.port}", flush=True)))
