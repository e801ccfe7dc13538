"""Hub security policies (issue 13): one pickle-weights policy for every way a file enters the
hub (UploadModel included); file names in every manifest and listing checked for traversal."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket

import pytest

from swiftmesh.clients.hub import HubClient
from swiftmesh.hub.v1 import hub_pb2
from swiftmesh.runtime.client import raise_domain_errors
from swiftmesh.runtime.errors import AlreadyExists, InvalidArgument, PermissionDenied
from swiftmesh.runtime.host import is_loopback
from swiftmesh.services.hub.pull import PullRequest
from swiftmesh.services.hub.store import ModelFormat
from tests.hub.helpers import write_model
from tests.hub.http_fixtures import FileServer, hf_mirror, ms_mirror


async def test_upload_of_pickle_weights_refused_unless_setting_allows(hub_server, tmp_path):
    model = write_model(tmp_path / "pk", {"model.safetensors": 100})
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        with pytest.raises(InvalidArgument) as e:
            await hub.upload_dir(model, "up-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
        assert e.value.reason == "PICKLE_REFUSED"
        assert "pytorch_model.bin" in e.value.message
        assert "hub.upload_allow_pickle" in e.value.message
        assert e.value.field_violations[0].field.startswith("header.files[")
        assert not (h.settings.hub_cache_dir / "models" / "up-pickle").exists()
    allowed = hub_server(hub={"upload_allow_pickle": True})
    async with HubClient(allowed.settings, allowed.target) as hub:
        m = await hub.upload_dir(model, "up-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
        assert "pytorch_model.bin" in {f.path for f in m.files}


BAD_NAMES = ["../escape.json", "/etc/passwd", "sub\\..\\x.json", "a\x00b.json", "ok/../../up.json"]


async def test_http_manifest_file_names_checked_for_traversal(hub_server, tmp_path):
    srv = FileServer({"/m/config.json": b"{}"}).start()
    h = hub_server()
    try:
        async with HubClient(h.settings, h.target) as hub:
            for i, bad in enumerate(BAD_NAMES):
                srv.routes[f"/m{i}/manifest.json"] = json.dumps({"files": [
                    {"path": "config.json", "url": f"{srv.base}/m/config.json"},
                    {"path": bad, "url": f"{srv.base}/m/config.json"}]}).encode()
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(f"{srv.base}/m{i}/manifest.json", model_id=f"bad{i}")
                assert e.value.reason == "INVALID_FILE_PATH" and repr(bad) in e.value.message
        assert not any(p.name == "escape.json" or p.name == "up.json" for p in tmp_path.rglob("*"))
    finally:
        srv.stop()


async def test_hf_and_ms_listing_file_names_checked_for_traversal(hub_server, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    files = {"config.json": b"{}", "../../escape.json": b"{}"}
    hf = hf_mirror(files, "acme/evil").start()
    ms = ms_mirror(files, "acme/evil").start()
    h = hub_server(hub={"hf_endpoint": hf.base, "ms_endpoint": ms.base})
    try:
        async with HubClient(h.settings, h.target) as hub:
            for src in ("hf://acme/evil", "ms://acme/evil"):
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(src)
                assert e.value.reason == "INVALID_FILE_PATH" and "../../escape.json" in e.value.message, src
    finally:
        hf.stop()
        ms.stop()


def test_loopback_addresses_and_grpc_peers():
    assert is_loopback("ipv4:127.0.0.1:5000") and is_loopback("ipv4:127.0.0.2:1")
    assert is_loopback("ipv6:[::1]:5000") and is_loopback("ipv6:[::ffff:127.0.0.1]:5000")
    assert is_loopback("unix:/tmp/hub.sock") and is_loopback("127.0.0.1") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("ipv4:10.1.2.3:5000") and not is_loopback("ipv6:[fe80::1%eth0]:5000")
    assert not is_loopback("ipv6:[::ffff:10.0.0.1]:1") and not is_loopback("0.0.0.0")
    assert not is_loopback("") and not is_loopback(None) and not is_loopback("ipv4:nonsense")
    assert not is_loopback("example.com")


def _remote_pull(h, source: str, **kw):
    job, _ = h.service.hub.start_pull(PullRequest(source=source, remote_caller=True, **kw))
    return job.future.result(timeout=60)


def test_remote_callers_read_local_paths_only_under_roots(hub_server, small_model, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    root = tmp_path / "root"
    model = root / "m"
    shutil.copytree(small_model, model)
    (model / "leak.json").symlink_to(outside / "secret.json")
    open_hub = hub_server()
    with pytest.raises(PermissionDenied) as e:  # no roots configured: no local path for remote callers
        _remote_pull(open_hub, str(small_model))
    assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED" and "none configured" in e.value.message
    h = hub_server(hub={"local_source_roots": [str(root)]})
    for source in ("/etc/passwd", f"{root}/../outside/secret.json", f"file://{outside}/secret.json",
                   str(model), "pkg://swiftmesh/__init__.py"):
        with pytest.raises(PermissionDenied) as e:
            _remote_pull(h, source, model_id="x", format=ModelFormat.FULL)
        assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED", source
    (model / "leak.json").unlink()
    rec = _remote_pull(h, str(model), model_id="inside")
    assert {f.path for f in rec.files} == {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}


def _outbound_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if is_loopback(ip) else ip


async def test_a_caller_on_another_address_may_not_pull_local_paths_over_grpc(hub_server, small_model):
    ip = _outbound_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback address to call the hub from")
    h = hub_server(hub={"host": ip}, auth_token="t0ken")  # off loopback: the token is required
    async with HubClient(h.settings, f"{ip}:{h.settings.hub.port}") as hub:
        for source in (str(small_model), "pkg://swiftmesh/__init__.py"):
            with pytest.raises(PermissionDenied) as e:
                await hub.pull(source, model_id="stolen", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "LOCAL_SOURCE_NOT_ALLOWED" and "none configured" in e.value.message
        assert await hub.list() == []


async def test_loopback_callers_keep_local_paths_over_grpc(hub_server, small_model):
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        m = await hub.pull(str(small_model), model_id="local-ok")
        assert m.name == "models/local-ok"


async def test_upload_refused_mid_stream_gets_the_hubs_status_every_time(hub_server, tmp_path):
    # The hub refuses the header while the client still streams chunks. grpc aio reports some of
    # those calls (about 1 in 8 here with 8 MiB) as INTERNAL "Internal error from Core"
    # (grpc/grpc#36066); the client must surface the hub's own status every time.
    model = write_model(tmp_path / "big", {"model.safetensors": 100, "pytorch_model.bin": 8 << 20})
    h = hub_server()
    async with HubClient(h.settings, h.target) as hub:
        for _ in range(40):
            with pytest.raises(InvalidArgument) as e:
                await hub.upload_dir(model, "big-pickle", format=hub_pb2.MODEL_FORMAT_FULL)
            assert e.value.reason == "PICKLE_REFUSED"
        (model / "pytorch_model.bin").rename(model / "model-2.safetensors")
        await hub.upload_dir(model, "big", format=hub_pb2.MODEL_FORMAT_FULL)
        (model / "model-3.safetensors").write_bytes(b"new" * (3 << 20))  # not in the cache yet
        for _ in range(20):
            with pytest.raises(AlreadyExists):
                await hub.upload_dir(model, "big", format=hub_pb2.MODEL_FORMAT_FULL)
        assert {f.path for f in (await hub.get("big")).files} == {"config.json", "model.safetensors",
                                                                   "model-2.safetensors"}
    assert not any((h.settings.hub_cache_dir / "staging").iterdir())


async def test_redirects_followed_only_within_the_allow_list(hub_server, tmp_path):
    weights = b"w" * 5000
    src = FileServer({"/m/config.json": b"{}", "/m/here.safetensors": weights}).start()
    other = FileServer({"/cdn/w.safetensors": weights}).start()  # another port: another origin
    src.redirects["/m/model.safetensors"] = f"{other.base}/cdn/w.safetensors"
    src.redirects["/m/moved.safetensors"] = "/m/here.safetensors"  # same host: always followed
    manifest = {"files": [{"path": "config.json"}, {"path": "model.safetensors"}]}
    src.routes["/m/manifest.json"] = json.dumps(manifest).encode()
    try:
        h = hub_server()
        async with HubClient(h.settings, h.target) as hub:
            with pytest.raises(PermissionDenied) as e:
                await hub.pull(f"{src.base}/m/manifest.json", model_id="redirected")
            assert e.value.reason == "REDIRECT_NOT_ALLOWED"
            assert f"127.0.0.1:{other.port}" in e.value.message and "hub.redirect_allow_hosts" in e.value.message
            assert other.requests == []  # the refused hop was never sent
            m = await hub.pull(f"{src.base}/m/moved.safetensors", model_id="moved", format=hub_pb2.MODEL_FORMAT_FULL)
            assert m.files[0].sha256 == hashlib.sha256(weights).hexdigest()
        allowed = hub_server(hub={"redirect_allow_hosts": [f"127.0.0.1:{other.port}"]})
        async with HubClient(allowed.settings, allowed.target) as hub:
            m = await hub.pull(f"{src.base}/m/manifest.json", model_id="redirected")
            assert {f.path: f.sha256 for f in m.files}["model.safetensors"] == hashlib.sha256(weights).hexdigest()
            assert other.gets("/cdn/w.safetensors")
    finally:
        src.stop()
        other.stop()


def test_redirect_policy_patterns_defaults_and_downgrade():
    import httpx

    from swiftmesh.runtime.config import ConfigError
    from swiftmesh.services.hub.redirects import RedirectPolicy
    from swiftmesh.services.hub.sources import default_redirect_hosts
    from swiftmesh.services.hub.sources.base import SourceContext

    public = RedirectPolicy(None, lambda: default_redirect_hosts(SourceContext(fetcher=None)))
    assert public.allows("cas-bridge.xethub.hf.co", 443) and public.allows("cdn-lfs.huggingface.co", 443)
    assert public.allows("modelscope.oss-cn-beijing.aliyuncs.com", 443)
    assert not public.allows("169.254.169.254", 80) and not public.allows("evil-hf.co", 443)
    mirror = SourceContext(fetcher=None, hf_endpoint="http://127.0.0.1:9", ms_endpoint="http://127.0.0.1:9")
    assert default_redirect_hosts(mirror) == []  # a mirror's downloads stay on its own host

    def chain(policy, *urls):
        ext: dict = {}
        for u in urls:  # as httpx builds a redirect request: the previous request's extensions copied
            req = httpx.Request("GET", u, extensions=ext)
            policy.on_request(req)
            ext = req.extensions

    chain(public, "https://huggingface.co/x/resolve/main/w", "https://cdn-lfs-us-1.hf.co/w", "https://cdn-lfs.hf.co/w")
    chain(RedirectPolicy([]), "http://a.test/x", "https://a.test/y")  # upgrade on the same host
    with pytest.raises(PermissionDenied) as e:
        chain(public, "https://huggingface.co/x", "http://cdn-lfs.hf.co/w")
    assert "https to plain http" in e.value.message
    with pytest.raises(PermissionDenied) as e:
        chain(RedirectPolicy(["*.cdn.test:8443"]), "http://a.test/x", "https://b.cdn.test/w")
    assert "b.cdn.test:443" in e.value.message and "*.cdn.test:8443" in e.value.message
    chain(RedirectPolicy(["*.cdn.test:8443"]), "http://a.test/x", "https://b.cdn.test:8443/w")
    for bad in ("", "http://x/", "host:notaport", "a/b"):
        with pytest.raises(ConfigError, match="hub.redirect_allow_hosts"):
            RedirectPolicy([bad])


async def test_hub_mirror_applies_the_pickle_policy(hub_server, tmp_path):
    model = write_model(tmp_path / "pk", {})
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    a = hub_server(hub={"upload_allow_pickle": True}, data_dir=tmp_path / "a")
    b = hub_server(data_dir=tmp_path / "b")
    async with HubClient(a.settings, a.target) as hub_a, HubClient(b.settings, b.target) as hub_b:
        await hub_a.upload_dir(model, "pk", format=hub_pb2.MODEL_FORMAT_FULL)
        with pytest.raises(InvalidArgument) as e:
            await hub_b.pull(f"hub://{a.target}/pk")
        assert e.value.reason == "PICKLE_REFUSED" and "pytorch_model.bin" in e.value.message
        m = await hub_b.pull(f"hub://{a.target}/pk", allow_pickle=True)
        assert "pytorch_model.bin" in {f.path for f in m.files}


async def test_manifest_file_urls_pass_the_redirect_host_check(hub_server):
    # Issue 13 follow-up: a manifest's per-file url used to be fetched from any host and any scheme
    # (file://, hub:// were retried with backoff); now it is held to the redirect rule.
    weights = b"s" * 3000
    src = FileServer({"/m/config.json": b"{}"}).start()
    other = FileServer({"/secret": weights}).start()  # another port: another origin
    manifests = {
        "/far/manifest.json": {"files": [{"path": "config.json", "url": f"{src.base}/m/config.json"},
                                         {"path": "w.safetensors", "url": f"{other.base}/secret"}]},
        "/rel/manifest.json": {"files": [{"path": "config.json", "url": "../m/config.json"}]},
    }
    for i, bad in enumerate(["file:///etc/passwd", "hub://127.0.0.1:1/x", "ftp://127.0.0.1/x", "data:text/plain,x", 7]):
        manifests[f"/s{i}/manifest.json"] = {"files": [{"path": "config.json", "url": bad}]}
    for route, doc in manifests.items():
        src.routes[route] = json.dumps(doc).encode()
    try:
        h = hub_server()
        async with HubClient(h.settings, h.target) as hub:
            with pytest.raises(PermissionDenied) as e:
                await hub.pull(f"{src.base}/far/manifest.json", model_id="far")
            assert e.value.reason == "REDIRECT_NOT_ALLOWED" and "w.safetensors" in e.value.message
            assert f"127.0.0.1:{other.port}" in e.value.message and "hub.redirect_allow_hosts" in e.value.message
            assert other.requests == []  # not even a HEAD
            for i in range(5):
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(f"{src.base}/s{i}/manifest.json", model_id=f"s{i}")
                assert "files[0] (config.json)" in e.value.message, e.value.message
                assert len([r for r in src.requests if f"/s{i}/" in r[1]]) == 1  # no retries
            m = await hub.pull(f"{src.base}/rel/manifest.json", model_id="rel", format=hub_pb2.MODEL_FORMAT_FULL)
            assert [f.path for f in m.files] == ["config.json"]
        allowed = hub_server(hub={"redirect_allow_hosts": [f"127.0.0.1:{other.port}"]})
        async with HubClient(allowed.settings, allowed.target) as hub:
            m = await hub.pull(f"{src.base}/far/manifest.json", model_id="far")
            assert {f.path: f.sha256 for f in m.files}["w.safetensors"] == hashlib.sha256(weights).hexdigest()
    finally:
        src.stop()
        other.stop()


async def test_conflicting_paths_and_bad_sizes_refused_before_any_transfer(hub_server):
    # Issue 13 follow-up: `a` and `a/b` in one model used to end in INTERNAL (FileExistsError,
    # IsADirectoryError with .part files left behind), and a negative size in DATA_LOSS after the
    # download. Now every manifest, listing and upload is checked as a whole first.
    src = FileServer({"/m/config.json": b"{}", "/m/config.json/x": b"x", "/m/w.safetensors": b"w" * 100}).start()
    manifests = {
        "conflict": ([{"path": "config.json"}, {"path": "config.json/x"}], "'config.json' and 'config.json/x'"),
        "twice": ([{"path": "config.json"}, {"path": "./config.json"}], "'config.json' is listed twice"),
        "negative": ([{"path": "config.json"}, {"path": "w.safetensors", "size": -5}], "size -5"),
        "text-size": ([{"path": "config.json", "size": "2"}], "size '2'"),
    }
    for name, (files, _) in manifests.items():
        for f in files:
            f["url"] = f"{src.base}/m/{f['path'].removeprefix('./')}"
        src.routes[f"/{name}/manifest.json"] = json.dumps({"files": files}).encode()
    h = hub_server()
    try:
        async with HubClient(h.settings, h.target) as hub:
            for name, (_, expected) in manifests.items():
                with pytest.raises(InvalidArgument) as e:
                    await hub.pull(f"{src.base}/{name}/manifest.json", model_id=name)
                assert expected in e.value.message, e.value.message
            assert not [r for r in src.requests if r[0] == "GET" and not r[1].endswith("manifest.json")]

            def header(paths):
                return hub_pb2.UploadModelRequest(header=hub_pb2.UploadModelHeader(
                    model_id="up", format=hub_pb2.MODEL_FORMAT_FULL,
                    files=[hub_pb2.ModelFile(path=p, size_bytes=1, sha256=hashlib.sha256(b"x").hexdigest())
                           for p in paths]))

            async def requests(paths):  # the header alone: no chunk in flight when it is refused (grpc/grpc#36066)
                yield header(paths)

            for paths in (["config.json", "a", "a/b"], ["config.json", "a/b/c", "a/b"]):
                with pytest.raises(InvalidArgument) as e, raise_domain_errors():
                    await hub.stub.UploadModel(requests(paths))
                assert e.value.reason == "INVALID_FILE_PATH" and "'a/b'" in e.value.message, e.value.message
                assert e.value.field_violations[0].field.startswith("header.files[")
        cache = h.settings.hub_cache_dir
        assert not list(cache.rglob("*.part")) and not any((cache / "staging").iterdir())
    finally:
        src.stop()


def test_file_list_check():
    from swiftmesh.names import validate_file_list

    assert validate_file_list([("./a/b", 1), ("a/c", None), ("ab", 0)], "source") == ["a/b", "a/c", "ab"]
    with pytest.raises(InvalidArgument) as e:
        validate_file_list([("x", 1), ("a/b", 1), ("a", 2)], "header.files[{i}]", "size_bytes")
    assert e.value.field_violations[0].field == "header.files[1].path" and "'a' and 'a/b'" in e.value.message
    with pytest.raises(InvalidArgument) as e:
        validate_file_list([("x", 1), ("y", -1)], "header.files[{i}]", "size_bytes")
    assert e.value.field_violations[0].field == "header.files[1].size_bytes" and e.value.reason == "INVALID_FILE_SIZE"
    for size in (True, 1.5, "3"):
        with pytest.raises(InvalidArgument, match="size"):
            validate_file_list([("x", size)], "source")


def test_local_plan_holds_resolved_paths_so_a_swapped_symlink_is_not_followed(tmp_path):
    # Issue 13 follow-up: the roots check resolved symlinks but the plan kept (and the copy opened)
    # the link itself, so a link changed between the check and the copy was followed outside.
    from swiftmesh.services.hub.download import Fetcher
    from swiftmesh.services.hub.sources import local
    from swiftmesh.services.hub.sources.base import SourceContext

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "m").mkdir(parents=True)
    outside.mkdir()
    (root / "m" / "config.json").write_text("{}")
    (root / "inside.json").write_text('{"inside": true}')
    (outside / "secret.json").write_text('{"secret": true}')
    (root / "m" / "w.json").symlink_to(root / "inside.json")
    fetcher = Fetcher(retries=0)
    try:
        ctx = SourceContext(fetcher=fetcher, local_roots=[root])
        for source in (str(root / "m"), str(root / "m" / "w.json")):
            plan = local.resolve(source, ctx)
            origin = {f.path: f.origin for f in plan.files}["w.json"]
            assert origin["path"] == str((root / "inside.json").resolve())
            (root / "m" / "w.json").unlink()  # swapped after the check, before the copy
            (root / "m" / "w.json").symlink_to(outside / "secret.json")
            part = tmp_path / "w.part"
            part.unlink(missing_ok=True)
            fetcher.fetch(origin, part)
            assert part.read_text() == '{"inside": true}'
            (root / "m" / "w.json").unlink()
            (root / "m" / "w.json").symlink_to(root / "inside.json")
    finally:
        fetcher.close()
