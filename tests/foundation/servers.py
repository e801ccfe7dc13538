"""A small test service on the real runtime: HubService.GetModel sleeps for the number of
seconds in the model id ("models/sleep-1.5"), raises domain errors for "models/bad" and
"models/boom", and fails with UNAVAILABLE the first N times for "models/flaky-N"."""

from __future__ import annotations

import asyncio

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


if __name__ == "__main__":  # the SIGTERM test's server, under runtime.server.serve, settings from SWIFTMESH_*
    from swiftmesh.runtime.server import serve

    s = Settings.load(None)
    asyncio.run(serve(sleepy_service(s), s))
