"""Hub pull throughput against its references, side by side in one run.

A multi-file model (default 4 x 256 MiB safetensors shards + small JSON files, 1 GiB) is served
by a real nginx on loopback, both as a plain directory (autoindex) and laid out as a Hugging
Face endpoint (``/api/models/<repo>/revision/main`` + ``/<repo>/resolve/<commit>/<file>``).
Each round, in this order, every contender downloads the whole model into an empty directory:

  curl-seq      one ``curl`` process fetching the files one after the other (keep-alive)
  curl-par      ``curl --parallel --parallel-max 4`` (the hub's default download_concurrency)
  hub-http      ``swiftmesh`` hub (a ``swiftmesh serve hub`` process) pulling ``http://.../model/``
  hf-snapshot   ``huggingface_hub.snapshot_download`` from the HF-layout mirror (its own threads)
  hub-hf        the hub pulling ``hf://bench/model`` from that mirror (hf_endpoint)
  hub-mirror    a second hub pulling ``hub://<first hub>/model`` (ReadModelFile streams)

The hub's numbers include what the references skip: resolving sizes/hashes, sha256 of every
byte, content-addressed commit. Rates are MB/s (10^6 bytes/s) of the model's size over the wall
time of the whole pull; medians over the rounds; ratios are median/median.

    python bench/hub/bench_pull.py [--shards 4 --shard-mib 256 --rounds 3 --out bench/results/hub.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from swiftmesh.testing.services import free_port
from tests.hub.nginx_server import Nginx

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_REPO = "bench/model"



def make_model(root: Path, shards: int, shard_mib: int) -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    (model / "tokenizer.json").write_bytes(os.urandom(2 << 20))
    (model / "generation_config.json").write_text("{}")
    for i in range(shards):
        with open(model / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            f.writelines(os.urandom(1 << 20) for _ in range(shard_mib))
    return model


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def hf_layout(root: Path, model: Path) -> str:
    """The JSON of ``/api/models/bench/model/revision/main`` and the nginx locations serving it."""
    siblings, tree = [], []
    for p in sorted(model.iterdir()):
        entry = {"rfilename": p.name, "size": p.stat().st_size}
        node = {"type": "file", "path": p.name, "size": p.stat().st_size}
        if p.suffix == ".safetensors":
            digest = sha256(p)
            entry["lfs"] = {"size": p.stat().st_size, "sha256": digest, "pointerSize": 134}
            node["lfs"] = {"size": p.stat().st_size, "oid": digest, "pointerSize": 134}
            node["oid"] = hashlib.sha1(p.name.encode(), usedforsecurity=False).hexdigest()
        else:
            data = p.read_bytes()
            entry["blobId"] = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
            node["oid"] = entry["blobId"]
        siblings.append(entry)
        tree.append(node)
    api = root / "api"
    api.mkdir()
    info = {"id": HF_REPO, "modelId": HF_REPO, "sha": COMMIT, "private": False, "siblings": siblings}
    (api / "info.json").write_text(json.dumps(info))
    (api / "tree.json").write_text(json.dumps(tree))
    return f"""
        location ~ ^/api/models/{HF_REPO}(/revision/[^/]+)?$ {{
            default_type application/json;
            alias {api}/info.json;
        }}
        location ~ ^/api/models/{HF_REPO}/tree/ {{
            default_type application/json;
            alias {api}/tree.json;
        }}
        location ~ ^/{HF_REPO}/resolve/[^/]+/(.+)$ {{
            alias {model}/$1;
            add_header X-Repo-Commit {COMMIT};
        }}
    """


class HubProc:
    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "SWIFTMESH_DATA_DIR": str(data_dir), "SWIFTMESH_HUB__PORT": str(self.port),
               "SWIFTMESH_HUB__METRICS_PORT": "0", "SWIFTMESH_TELEMETRY__LOG_LEVEL": "WARNING",
               **(extra_env or {})}
        self.log = data_dir.parent / f"hub-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "swiftmesh.cli.main", "serve", "hub"],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.time() + 60
        while "hub serving on" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.1)
        # let the start-up work (warm-up imports of the hf/ms clients) finish before measuring
        last = proc_cpu(self.proc.pid)
        while time.time() < deadline:
            time.sleep(0.3)
            now = proc_cpu(self.proc.pid)
            if now - last < 0.03:
                break
            last = now

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def hub_pull(target: str, source: str, client_dir: Path) -> float:
    from swiftmesh.clients.hub import HubClient
    from swiftmesh.runtime.config import Settings

    settings = Settings.load(None, data_dir=client_dir)

    async def go() -> float:
        async with HubClient(settings, target) as hub:
            t = time.perf_counter()
            await hub.pull(source, "model", force=True)
            return time.perf_counter() - t

    return asyncio.run(go())


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hub.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubbench-", dir=args.workdir))
    try:
        www = work / "www"
        model = make_model(www, args.shards, args.shard_mib)
        size = sum(p.stat().st_size for p in model.iterdir())
        files = sorted(p.name for p in model.iterdir())
        ng = Nginx(www, extra_locations=hf_layout(work, model), workers=2).start()
        base = ng.url("model/")
        print(f"model: {len(files)} files, {size / 2**30:.2f} GiB; nginx {ng.base}", flush=True)

        # the hub that serves the mirror reads
        src_hub = HubProc(work / "src-hub")
        hub_pull(src_hub.target, base, work / "client")
        times: dict[str, list[float]] = {k: [] for k in
                                         ("curl-seq", "curl-par", "hub-http", "hf-snapshot", "hub-hf", "hub-mirror")}

        def fresh(name: str) -> Path:
            d = work / "out" / name
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            return d

        cpu: dict[str, list[float]] = {k: [] for k in times}

        def run_hub(name: str, rnd: int, source: str, env: dict[str, str] | None = None) -> None:
            hub = HubProc(work / f"hub-{rnd}", env)
            c_hub, c_self = proc_cpu(hub.proc.pid), self_cpu()
            src_before = proc_cpu(src_hub.proc.pid)
            times[name].append(hub_pull(hub.target, source, work / "client"))
            used = proc_cpu(hub.proc.pid) - c_hub + self_cpu() - c_self
            if name == "hub-mirror":
                used += proc_cpu(src_hub.proc.pid) - src_before  # the serving side too
            cpu[name].append(used)
            hub.stop()
            shutil.rmtree(work / f"hub-{rnd}", ignore_errors=True)

        def run_cmd(name: str, cmd: list[str]) -> None:
            c = children_cpu()
            times[name].append(timed(cmd))
            cpu[name].append(children_cpu() - c)

        for rnd in range(args.rounds):
            d = fresh("curl")
            cmd = ["curl", "-sS", "--fail"]
            for f in files:
                cmd += ["-o", str(d / f), base + f]
            run_cmd("curl-seq", cmd)
            d = fresh("curl")
            run_cmd("curl-par", cmd[:3] + ["--parallel", "--parallel-max", "4", "--no-progress-meter"] + cmd[3:])
            shutil.rmtree(work / "out", ignore_errors=True)

            run_hub("hub-http", rnd, base)

            d = fresh("hf")
            env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
            code = ("import sys,time; from huggingface_hub import snapshot_download; t=time.perf_counter(); "
                    f"snapshot_download('{HF_REPO}', endpoint='{ng.base}', cache_dir=sys.argv[1]); "
                    "print(time.perf_counter()-t)")
            c = children_cpu()
            out = subprocess.run([sys.executable, "-c", code, str(d)], env=env, capture_output=True, text=True,
                                 check=False)
            if out.returncode != 0:
                raise RuntimeError(f"snapshot_download failed: {out.stderr[-3000:]}")
            times["hf-snapshot"].append(float(out.stdout.strip().splitlines()[-1]))
            cpu["hf-snapshot"].append(children_cpu() - c)  # includes its interpreter start (~1 s)
            shutil.rmtree(d, ignore_errors=True)

            run_hub("hub-hf", rnd, f"hf://{HF_REPO}", {"SWIFTMESH_HUB__HF_ENDPOINT": ng.base})
            run_hub("hub-mirror", rnd, f"hub://{src_hub.target}/model")
            print(f"round {rnd + 1}: " + ", ".join(
                f"{k} {size / v[-1] / 1e6:.0f} MB/s ({cpu[k][-1]:.1f} cpu-s)" for k, v in times.items()), flush=True)
        src_hub.stop()
        ng.stop()

        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: size / v / 1e6 for k, v in med.items()}
        ratios = {
            "hub-http / curl-seq": med["curl-seq"] / med["hub-http"],
            "hub-http / curl-par": med["curl-par"] / med["hub-http"],
            "hub-hf / hf-snapshot": med["hf-snapshot"] / med["hub-hf"],
            "hub-mirror / curl-seq": med["curl-seq"] / med["hub-mirror"],
        }
        cpu_per_gib = {k: statistics.median(v) / (size / 2**30) for k, v in cpu.items()}
        result = {
            "model_bytes": size, "files": len(files), "rounds": args.rounds, "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(), "seconds": times, "cpu_seconds": cpu,
            "median_mb_per_s": rate, "ratios": ratios, "median_cpu_seconds_per_gib": cpu_per_gib,
        }
        print(json.dumps({"median_mb_per_s": rate, "ratios": ratios, "median_cpu_seconds_per_gib": cpu_per_gib},
                         indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
