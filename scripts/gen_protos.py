#!/usr/bin/env python
"""Regenerate the Python stubs of every contract under protos/ (one command).

    python scripts/gen_protos.py            # writes swiftmesh/<svc>/v1/*_pb2*.py(i)
    python scripts/gen_protos.py --out DIR  # writes into DIR instead (the drift test uses this)

Uses grpcio-tools' bundled protoc, so the output depends only on the pinned grpcio-tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Generate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into `out`.

    Returns the generated files (relative to `out`). Raises RuntimeError if protoc fails.
    """
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    generated: list[Path] = []
    for rel in files:
        pkg_dir = out / Path(rel).parent
        # every directory on the way becomes a package (swiftmesh/ itself already is one)
        d = pkg_dir
        while d != out / "swiftmesh":
            init = d / "__init__.py"
            if d.parent == out / "swiftmesh":  # swiftmesh/<pkg>/: say what it holds
                pkg = d.name
                init.write_text(f'"""Generated protobuf and gRPC code of the ``swiftmesh.{pkg}.v1`` contracts '
                                f'(``protos/swiftmesh/{pkg}/v1``)."""\n')
            else:
                init.touch()
            generated.append((d / "__init__.py").relative_to(out))
            d = d.parent
        stem = Path(rel).stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated.append((pkg_dir / f"{stem}{suffix}").relative_to(out))
    return sorted(set(generated))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository root)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
