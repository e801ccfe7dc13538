"""The generic ``swiftmesh.jobs.v1.JobService`` servicer over a :class:`JobManager`.

Proto <-> domain translation only; every service that runs jobs registers it as is::

    service.add(JobServicer(manager), jobs_pb2_grpc.add_JobServiceServicer_to_server, JOB_SERVICE_NAME)
"""

from __future__ import annotations

from google.protobuf import empty_pb2

from swiftmesh.jobkit.manager import JobManager
from swiftmesh.jobs.v1 import jobs_pb2, jobs_pb2_grpc

JOB_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context) -> jobs_pb2.Job:
        return await self.manager.get(request.name)

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context) -> jobs_pb2.ListJobsResponse:
        jobs, token = await self.manager.list(
            page_size=request.page_size,
            page_token=request.page_token,
            states_=list(request.states),
            kinds=list(request.kinds),
        )
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context) -> jobs_pb2.Job:
        return await self.manager.cancel(request.name)

    async def ResumeJob(self, request: jobs_pb2.ResumeJobRequest, context) -> jobs_pb2.Job:
        return await self.manager.resume(request.name)

    async def DeleteJob(self, request: jobs_pb2.DeleteJobRequest, context) -> empty_pb2.Empty:
        await self.manager.delete(request.name)
        return empty_pb2.Empty()

    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context):
        async for ev in self.manager.watch(request.name, start_sequence=request.start_sequence, follow=request.follow):
            yield ev
