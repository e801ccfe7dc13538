"""A small in-test InferenceService (development only): characters are tokens."""

from __future__ import annotations

import asyncio
import random
import time

from swiftmesh.gateway.v1 import inference_pb2 as pb
from swiftmesh.gateway.v1 import inference_pb2_grpc
from swiftmesh.runtime.errors import InvalidArgument, NotFound
from swiftmesh.runtime.server import Service

TEXT = "Hello world! This is a fake model speaking. "


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.running = 0
        self.aborted = 0
        self.models = {
            "fake": pb.ServedModel(id="fake", hub_model="models/fake", max_model_len=512, has_chat_template=True, created=int(time.time())),
            "raw": pb.ServedModel(id="raw", hub_model="models/raw", max_model_len=512, has_chat_template=False, created=int(time.time())),
        }

    async def GetWorkerStatus(self, request, context):
        return pb.WorkerStatus(engine="fake", running=self.running, waiting=0, models=list(self.models.values()), ready=True, device="cpu")

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=list(self.models.values()))

    async def LoadAdapter(self, request, context):
        name = request.served_name or request.hub_model.removeprefix("models/")
        m = pb.ServedModel(id=name, parent=request.base or "fake", hub_model=request.hub_model, max_model_len=512,
                           has_chat_template=True, created=int(time.time()))
        self.models[name] = m
        return m

    async def UnloadAdapter(self, request, context):
        self.models.pop(request.served_name, None)
        from google.protobuf import empty_pb2
        return empty_pb2.Empty()

    async def Generate(self, request, context):
        if request.model not in self.models:
            raise NotFound(f"model {request.model} not served")
        info = self.models[request.model]
        kind = request.WhichOneof("prompt")
        if kind == "chat":
            if not info.has_chat_template:
                raise InvalidArgument("model has no chat template")
            prompt = "".join(f"<{m.role}>{m.content}" for m in request.chat.messages) + "<assistant>"
        elif kind == "text":
            prompt = request.text
        else:
            prompt = "".join(chr(97 + (t % 26)) for t in request.token_ids.ids)
        s = request.sampling
        n = s.n or 1
        max_tokens = s.max_tokens or 64
        temp = s.temperature if s.HasField("temperature") else 1.0
        seed = s.seed if s.HasField("seed") else None
        self.running += 1
        finished = False
        try:
            if request.echo:
                plp = [pb.TokenLogprob(token_id=ord(c), token=c) if i == 0 else
                       pb.TokenLogprob(token_id=ord(c), token=c, logprob=-1.0,
                                       top_logprobs=[pb.TopLogprob(token_id=ord(c), token=c, logprob=-1.0)][: max(s.prompt_logprobs, 0) or 0])
                       for i, c in enumerate(prompt)] if s.prompt_logprobs >= 0 else []
                yield pb.GenerateResponse(request_id=request.request_id, prompt_text=prompt, prompt_logprobs=plp,
                                          prompt_token_ids=[ord(c) for c in prompt])
            states = []
            for i in range(n):
                rng = random.Random(seed + i if seed is not None else None)
                start = (sum(map(ord, prompt)) % len(TEXT)) if temp == 0 else rng.randrange(len(TEXT))
                states.append({"pos": start, "text": "", "count": 0, "done": False})
            total = 0
            while not all(st["done"] for st in states):
                await asyncio.sleep(self.delay)
                outs = []
                for i, st in enumerate(states):
                    if st["done"]:
                        continue
                    c = TEXT[st["pos"] % len(TEXT)]
                    st["pos"] += 1
                    st["count"] += 1
                    total += 1
                    st["text"] += c
                    out = pb.CompletionOutput(index=i, token_ids=[ord(c)], text=c)
                    if s.logprobs >= 0:
                        out.logprobs.append(pb.TokenLogprob(token_id=ord(c), token=c, logprob=-0.5, top_logprobs=[
                            pb.TopLogprob(token_id=ord(c) + j, token=chr(ord(c) + j), logprob=-0.5 - j) for j in range(s.logprobs)]))
                    for stop in s.stop:
                        if st["text"].endswith(stop):
                            out.text = c[: len(c) - len(stop)] if len(stop) <= 1 else ""
                            out.finish_reason = "stop"
                            out.stop_reason = stop
                    if not out.finish_reason and st["count"] >= max_tokens:
                        out.finish_reason = "length"
                    if out.finish_reason:
                        st["done"] = True
                    outs.append(out)
                msg = pb.GenerateResponse(request_id=request.request_id, outputs=outs)
                if all(st["done"] for st in states):
                    msg.usage.prompt_tokens = len(prompt)
                    msg.usage.completion_tokens = total
                yield msg
            finished = True
        finally:
            self.running -= 1
            if not finished:
                self.aborted += 1


def create_fake_service(settings) -> tuple[Service, FakeInference]:
    fake = FakeInference()
    service = Service("worker", endpoint=settings.worker)
    name = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
    service.add(fake, inference_pb2_grpc.add_InferenceServiceServicer_to_server, name)
    return service, fake


if __name__ == "__main__":
    import sys

    from swiftmesh.runtime.config import Settings
    from swiftmesh.runtime.server import serve

    port = int(sys.argv[1])
    settings = Settings.load(None, worker={"port": port, "metrics_port": 0})
    svc, _ = create_fake_service(settings)
    asyncio.run(serve(svc, settings, ready=lambda r: print("ready", flush=True)))
