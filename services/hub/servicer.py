"""HubService servicer: translates between hub.v1 messages and the domain (:mod:`.hub`).

Blocking domain calls run in worker threads (``asyncio.to_thread``); pulls run in their own
threads and stream progress through an asyncio queue. Domain errors propagate unchanged (the
runtime's StatusInterceptor turns them into statuses with google.rpc details).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from google.protobuf import duration_pb2, empty_pb2, timestamp_pb2

from swiftmesh.hub.v1 import hub_pb2, hub_pb2_grpc
from swiftmesh.runtime.errors import InvalidArgument
from swiftmesh.runtime.host import is_loopback

from .hub import Hub
from .progress import Progress
from .pull import PullRequest
from .store import FileEntry, Lineage, ModelFormat, ModelRecord
from .upload import UploadHeader
from .verify import FileCheck

log = logging.getLogger("swiftmesh.hub.servicer")


def _ts(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def model_to_proto(rec: ModelRecord, host_id: str) -> hub_pb2.Model:
    """A committed model as ``hub.v1.Model`` (``host_id``: this hub's LocalLocation host id)."""
    return hub_pb2.Model(
        name=rec.name,
        format=int(rec.format),
        source=rec.source,
        revision=rec.revision,
        files=[hub_pb2.ModelFile(path=f.path, size_bytes=f.size, sha256=f.sha256) for f in rec.files],
        size_bytes=rec.size_bytes,
        lineage=hub_pb2.Lineage(base_model=rec.lineage.base_model, parent_model=rec.lineage.parent_model,
                                job=rec.lineage.job),
        create_time=_ts(rec.create_time),
        last_used_time=_ts(rec.last_used_time),
        pins=rec.pins,
        labels=rec.labels,
        location=hub_pb2.LocalLocation(host_id=host_id, path=str(rec.path)),
    )


def progress_to_proto(p: Progress) -> hub_pb2.PullProgress:
    """A pull's progress as ``hub.v1.PullProgress`` (ETA as a Duration when known)."""
    msg = hub_pb2.PullProgress(
        stage=int(p.stage),
        bytes_done=p.bytes_done,
        bytes_total=p.bytes_total,
        files_done=p.files_done,
        files_total=p.files_total,
        bytes_per_second=p.bytes_per_second,
        current_file=p.current_file,
        following=p.following,
        bytes_resumed=p.bytes_resumed,
    )
    if p.eta_s is not None:
        msg.eta.CopyFrom(duration_pb2.Duration(seconds=int(p.eta_s), nanos=int((p.eta_s % 1) * 1e9)))
    return msg


def _lineage(msg: hub_pb2.Lineage) -> Lineage:
    return Lineage(base_model=msg.base_model, parent_model=msg.parent_model, job=msg.job)


def _format(value: int, field: str) -> ModelFormat:
    try:
        return ModelFormat(value)
    except ValueError:
        raise InvalidArgument(f"unknown format {value}", field_violations=[(field, f"unknown value {value}")]) from None


class HubServicer(hub_pb2_grpc.HubServiceServicer):
    """The gRPC face of :class:`Hub`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _model(self, rec: ModelRecord) -> hub_pb2.Model:
        return model_to_proto(rec, self.hub.host_id)

    async def PullModel(self, request: hub_pb2.PullModelRequest, context) -> AsyncIterator[hub_pb2.PullModelResponse]:
        """Start or join the pull; stream its newest progress, then the committed model."""
        req = PullRequest(
            source=request.source,
            model_id=request.model_id,
            revision=request.revision,
            allow_patterns=list(request.allow_patterns),
            ignore_patterns=list(request.ignore_patterns),
            allow_pickle=request.allow_pickle,
            force=request.force,
            lineage=_lineage(request.lineage),
            labels=dict(request.labels),
            pin=request.pin,
            format=_format(request.format, "format"),
            remote_caller=not is_loopback(context.peer()),
        )
        job, following = await asyncio.to_thread(self.hub.start_pull, req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        finished = asyncio.Event()

        def on_progress(p: Progress) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(queue.put_nowait, p)

        def on_done(_f) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished.set)

        token = job.subscribe(on_progress, following)
        job.future.add_done_callback(on_done)
        try:
            while not finished.is_set():
                getter = asyncio.ensure_future(queue.get())
                waiter = asyncio.ensure_future(finished.wait())
                try:
                    done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter in done:
                    latest = getter.result()
                    while not queue.empty():  # send only the newest
                        latest = queue.get_nowait()
                    if not finished.is_set():
                        yield hub_pb2.PullModelResponse(progress=progress_to_proto(latest))
            rec = job.future.result()  # raises the pull's error
            rec = await asyncio.to_thread(self.hub.finish_pull, req, rec)
            yield hub_pb2.PullModelResponse(model=self._model(rec))
        finally:
            job.unsubscribe(token)

    async def GetModel(self, request: hub_pb2.GetModelRequest, context) -> hub_pb2.Model:
        """The model ``request.name``."""
        return self._model(await asyncio.to_thread(self.hub.get, request.name))

    async def ListModels(self, request: hub_pb2.ListModelsRequest, context) -> hub_pb2.ListModelsResponse:
        """One page of models, newest first."""
        models, token = await asyncio.to_thread(
            self.hub.list,
            formats=list(request.formats),
            base_model=request.base_model,
            parent_model=request.parent_model,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return hub_pb2.ListModelsResponse(models=[self._model(m) for m in models], next_page_token=token)

    async def DeleteModel(self, request: hub_pb2.DeleteModelRequest, context) -> empty_pb2.Empty:
        """Delete the model (``force``: even when pinned)."""
        await asyncio.to_thread(self.hub.delete, request.name, request.force)
        return empty_pb2.Empty()

    async def VerifyModel(self, request: hub_pb2.VerifyModelRequest, context) -> hub_pb2.VerifyModelResponse:
        """Re-hash every file (with ``repair``: restore bad ones); per-file results."""
        rec, ok, checks = await asyncio.to_thread(self.hub.verify, request.name, request.repair)

        def fr(c: FileCheck) -> hub_pb2.VerifyModelResponse.FileResult:
            return hub_pb2.VerifyModelResponse.FileResult(
                path=c.path, status=c.status, expected_sha256=c.expected_sha256, actual_sha256=c.actual_sha256
            )

        return hub_pb2.VerifyModelResponse(model=self._model(rec), ok=ok, files=[fr(c) for c in checks])

    async def ReadModelFile(self, request: hub_pb2.ReadModelFileRequest, context) -> AsyncIterator[hub_pb2.ReadModelFileResponse]:
        """Stream one file's bytes from ``offset``; one empty message for an empty range."""
        entry, chunks = await asyncio.to_thread(
            self.hub.open_file, request.name, request.path, request.offset, request.limit, request.chunk_size
        )
        sent = False
        try:
            while True:
                item = await asyncio.to_thread(next, chunks, None)
                if item is None:
                    break
                offset, data = item
                sent = True
                yield hub_pb2.ReadModelFileResponse(offset=offset, data=data, file_size=entry.size, sha256=entry.sha256)
            if not sent:  # empty file or offset at the end: still tell size and hash
                yield hub_pb2.ReadModelFileResponse(offset=request.offset, data=b"", file_size=entry.size,
                                                    sha256=entry.sha256)
        finally:
            chunks.close()

    async def UploadModel(self, request_iterator, context) -> hub_pb2.Model:
        """Header first, then chunks; the model once every file is complete and verified."""
        first = None
        async for msg in request_iterator:
            first = msg
            break
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first UploadModel message must be the header",
                                  field_violations=[("header", "required as the first message")])
        h = first.header
        header = UploadHeader(
            model_id=h.model_id,
            format=_format(h.format, "header.format"),
            files=[FileEntry(f.path, f.size_bytes, f.sha256) for f in h.files],
            lineage=_lineage(h.lineage),
            labels=dict(h.labels),
            overwrite=h.overwrite,
        )
        upload = await asyncio.to_thread(self.hub.begin_upload, header)
        try:
            async for msg in request_iterator:
                if msg.HasField("header"):
                    raise InvalidArgument("only the first message may be a header",
                                          field_violations=[("header", "sent twice")])
                c = msg.chunk
                await asyncio.to_thread(upload.write, c.path, c.offset, c.data)
            rec = await asyncio.to_thread(upload.commit)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(upload.abort))
            raise
        return self._model(rec)

    async def PinModel(self, request: hub_pb2.PinModelRequest, context) -> hub_pb2.Model:
        """Pin the model for ``holder``."""
        return self._model(await asyncio.to_thread(self.hub.pin, request.name, request.holder))

    async def UnpinModel(self, request: hub_pb2.UnpinModelRequest, context) -> hub_pb2.Model:
        """Remove ``holder``'s pin."""
        return self._model(await asyncio.to_thread(self.hub.unpin, request.name, request.holder))
