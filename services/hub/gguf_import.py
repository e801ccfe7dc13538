"""GGUF import: a ``.gguf`` file becomes a normal Hugging Face model directory.

transformers (with the ``gguf`` package) reads and dequantizes the GGUF weights and its
tokenizer; the model is then rebuilt from its config without the GGUF quantization config
(``save_pretrained`` refuses GGUF-quantized models) and written as safetensors with
``config.json``, ``generation_config.json``, the tokenizer files and the chat template, so
every engine and trainer loads it like any other model. The hub runs the import in a child
process (:func:`convert_gguf`), so the memory of the dequantized model is returned and a cancelled
pull can stop it.

Format reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from swiftmesh.runtime.errors import Internal, InvalidArgument

from .download import PullCancelled


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Convert ``gguf_path`` into a Hugging Face model directory at ``out_dir``.

    Args:
        gguf_path: the ``.gguf`` file.
        out_dir: destination directory; written atomically (a sibling temp dir renamed at the end),
            so it either holds the complete model or does not exist.
        dtype: weight dtype of the safetensors ("bfloat16", "float16" or "float32").

    Returns the output directory. Raises InvalidArgument if the file is not a GGUF model that
    transformers can load (the message names the file and the cause).
    """
    src = Path(gguf_path)
    out = Path(out_dir)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise InvalidArgument(f"unsupported dtype {dtype!r}", field_violations=[("dtype", "bfloat16, float16 or float32")])
    with open(src, "rb") as f:  # before the heavy imports: a wrong file fails fast
        if f.read(4) != b"GGUF":
            raise InvalidArgument(f"{src.name} is not a GGUF file (bad magic)", field_violations=[("source", "not GGUF")])

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    except Exception as e:
        raise InvalidArgument(
            f"cannot import GGUF {src.name}: {type(e).__name__}: {e}", field_violations=[("source", str(e)[:200])]
        ) from e
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, _unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied embeddings: lm_head.weight may be absent from the GGUF state dict
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        raise InvalidArgument(f"GGUF {src.name} lacks weights: {missing[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    del gguf_model

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _ensure_chat_template(tmp, tokenizer)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _ensure_chat_template(model_dir: Path, tokenizer) -> None:
    """Keep the chat template where every loader looks (tokenizer_config.json and chat_template.jinja)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return
    if not (model_dir / "chat_template.jinja").exists():
        (model_dir / "chat_template.jinja").write_text(template)
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    if "chat_template" not in cfg:
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def convert_gguf(gguf_path: Path, out_dir: Path, cancel: threading.Event | None) -> None:
    """Run :func:`import_gguf` in a child process so its memory is
    returned and it can be stopped. Raises InvalidArgument (not a loadable GGUF; the message
    carries the converter's error), PullCancelled."""
    cmd = [sys.executable, "-m", "swiftmesh.services.hub.gguf_import", str(gguf_path), str(out_dir)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        while True:
            try:
                _out, err = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    proc.kill()
                    proc.wait()
                    raise PullCancelled() from None
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()
        marker = "GGUF_IMPORT_ERROR:"
        msg = text.split(marker, 1)[1].strip() if marker in text else text[-2000:]
        if proc.returncode == 3:
            raise InvalidArgument(f"GGUF import of {gguf_path.name} failed: {msg}",
                                  field_violations=[("source", msg[:300])], reason="GGUF_IMPORT_FAILED")
        raise Internal(f"GGUF import of {gguf_path.name} crashed (exit {proc.returncode}): {msg}")
    if not (out_dir / "config.json").is_file():
        raise Internal(f"GGUF import of {gguf_path.name} produced no config.json")


def main(argv: list[str] | None = None) -> int:
    """``python -m swiftmesh.services.hub.gguf_import GGUF OUT_DIR [--dtype bfloat16]``.

    Exit 0 on success; 3 when the file cannot be imported (the reason follows
    ``GGUF_IMPORT_ERROR:`` on stderr); other codes on crashes. The hub runs imports this way so
    the memory of the dequantized model is returned and a cancelled pull can stop it.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="gguf_import", description="Convert a GGUF file to a HF model directory")
    parser.add_argument("gguf")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    try:
        import_gguf(args.gguf, args.out_dir, dtype=args.dtype)
    except InvalidArgument as e:
        print(f"GGUF_IMPORT_ERROR: {e.message}", file=sys.stderr)
        return 3
    except FileNotFoundError as e:
        print(f"GGUF_IMPORT_ERROR: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
