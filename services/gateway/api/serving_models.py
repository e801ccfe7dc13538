"""``GET /v1/models`` and ``GET /v1/models/{model}`` (https://platform.openai.com/docs/api-reference/models):
the models served by healthy workers; adapters carry their base model in ``parent``."""

from __future__ import annotations

import time

from swiftmesh.clients.inference import ServedModel

from ..router import WorkerPool
from .errors import APIError
from .protocol import ModelCard, ModelList


def model_card(m: ServedModel) -> ModelCard:
    """The OpenAI model object of a served model (``created`` now when the worker did not say)."""
    return ModelCard(id=m.id, created=int(m.created) or int(time.time()), root=m.hub_model or None,
                     parent=m.parent or None, max_model_len=m.max_model_len or None)


class OpenAIServingModels:
    """The models endpoints over a worker pool."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def list(self) -> ModelList:
        """Every served model, each base model followed by its adapters."""
        cards = sorted((model_card(m) for m in self.pool.served_models()),
                       key=lambda c: (c.parent or c.id, c.parent is not None, c.id))
        return ModelList(data=cards)

    def get(self, model: str) -> ModelCard:
        """One served model; APIError 404 ``model_not_found`` if no healthy worker serves it."""
        info = self.pool.model_info(model)
        if info is None:
            raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return model_card(info)
