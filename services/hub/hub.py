"""The hub's domain facade: one :class:`Hub` per process over one cache directory, composing
the catalogue, pulls, uploads, verification, reads and eviction. No gRPC here; the servicer
translates. Blocking code: call it from threads.

Guarantees:

* A model is visible (GetModel/ListModels) only after every file is complete, hashed and
  linked; a force re-pull replaces the old snapshot atomically (readers of the old snapshot
  keep their open files).
* Pulls resume: partial downloads stay in ``tmp/`` across crashes and ``kill -9``; complete
  files are blobs, found again by hash (or by a fetch record when the source gives no hash).
* Concurrent pulls of one model do one transfer (:mod:`.pull`).
* With ``hub.quota_bytes`` set (blobs and partial downloads), room is made before downloading by
  dropping orphan blobs and then least-recently-used unpinned models; if even that is not
  enough, ResourceExhausted and nothing is downloaded or evicted (:mod:`.eviction`). A file of
  unannounced size is checked while it grows.
* Commit points are fsynced (blobs, their directories, snapshots); a full disk is
  ResourceExhausted (reason DISK_FULL) naming the path and the free bytes, the partial file is
  removed and the database stays usable.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter

from swiftmesh.names import validate_file_path
from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.errors import DataLoss, InvalidArgument, NotFound
from swiftmesh.runtime.host import machine_id

from .catalogue import Catalogue
from .download import Fetcher
from .eviction import Eviction
from .peers import PeerHubs
from .progress import PullJob
from .pull import Puller, PullRequest
from .redirects import RedirectPolicy
from .sources import auth_headers, default_redirect_hosts
from .sources.base import SourceContext
from .store import FileEntry, ModelRecord, Store
from .upload import Upload, UploadHeader, begin_upload
from .verify import FileCheck, Verifier

BYTES_SERVED = Counter("swiftmesh_hub_bytes_served_total", "Bytes the hub served through ReadModelFile.")

# ReadModelFile chunk sizes, bytes: the most a request may ask for, and the default.
MAX_CHUNK = 4 << 20
DEFAULT_CHUNK = 1 << 20


class Hub:
    """Domain object of one hub process over one cache directory (shareable by several processes).

    Args:
        settings: uses ``hub_cache_dir`` and the ``hub`` section (quota, endpoints, retries,
            download concurrency, local source roots, redirect hosts). Raises ConfigError for a
            malformed ``hub.redirect_allow_hosts`` entry.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        hs = settings.hub
        self.store = Store(settings.hub_cache_dir)
        self.host_id = f"{machine_id()}|{self.store.cache_id}"
        self.ctx = SourceContext(
            fetcher=None,  # set below
            hf_endpoint=hs.hf_endpoint,
            hf_token=hs.hf_token.get_secret_value() if hs.hf_token else None,
            ms_endpoint=hs.ms_endpoint,
            ms_token=(hs.ms_token.get_secret_value() if getattr(hs, "ms_token", None) else None),
            local_roots=getattr(hs, "local_source_roots", None),
        )
        self.peers = PeerHubs(settings)
        self.ctx.peers = self.peers
        redirects = RedirectPolicy(hs.redirect_allow_hosts, lambda: default_redirect_hosts(self.ctx))
        self.fetcher = Fetcher(retries=hs.download_retries, header_provider=self._headers_for, peers=self.peers,
                               redirects=redirects)
        self.ctx.fetcher = self.fetcher
        self.eviction = Eviction(self.store, hs.quota_bytes, hs.partial_max_age_s)
        self.catalogue = Catalogue(self.store, self.eviction)
        self.puller = Puller(self.store, self.catalogue, self.eviction, self.fetcher, self.ctx,
                             hs.download_concurrency)
        self.verifier = Verifier(self.store, self.catalogue, self.fetcher)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel pulls in flight (their partial files stay) and wait up to ``timeout`` s for them."""
        self.puller.close(timeout)
        self.fetcher.close()
        self.peers.close()

    def housekeeping(self) -> None:
        """Remove what interrupted work left that nothing will resume (:meth:`.Eviction.housekeeping`)."""
        self.eviction.housekeeping()

    def _headers_for(self, origin: dict) -> dict[str, str]:
        return auth_headers(origin, self.ctx)

    # -- catalogue ------------------------------------------------------------------------
    def get(self, name: str, *, field: str = "name", touch: bool = True) -> ModelRecord:
        """The model ``models/{id}`` (:meth:`.Catalogue.get`). Raises InvalidArgument, NotFound."""
        return self.catalogue.get(name, field=field, touch=touch)

    def list(self, *, formats: list[int] = (), base_model: str = "", parent_model: str = "",  # type: ignore[assignment]
             page_size: int = 0, page_token: str = "") -> tuple[list[ModelRecord], str]:
        """Models newest first, filtered, one page (:meth:`.Catalogue.list`): (models, next_page_token)."""
        return self.catalogue.list(formats=formats, base_model=base_model, parent_model=parent_model,
                                   page_size=page_size, page_token=page_token)

    def pin(self, name: str, holder: str) -> ModelRecord:
        """Pin for ``holder`` (:meth:`.Catalogue.pin`)."""
        return self.catalogue.pin(name, holder)

    def unpin(self, name: str, holder: str) -> ModelRecord:
        """Remove ``holder``'s pin (:meth:`.Catalogue.unpin`)."""
        return self.catalogue.unpin(name, holder)

    def delete(self, name: str, force: bool = False, *, lock_timeout: float = 30.0) -> None:
        """Delete a model (:meth:`.Catalogue.delete`)."""
        self.catalogue.delete(name, force, lock_timeout=lock_timeout)

    # -- pulls, uploads, verification -------------------------------------------------------
    def start_pull(self, req: PullRequest) -> tuple[PullJob, bool]:
        """Start or join a pull (:meth:`.Puller.start_pull`): (job, following)."""
        return self.puller.start_pull(req)

    def finish_pull(self, req: PullRequest, rec: ModelRecord) -> ModelRecord:
        """Apply one request's pin and labels after its pull (:meth:`.Puller.finish_pull`)."""
        return self.puller.finish_pull(req, rec)

    def begin_upload(self, header: UploadHeader) -> Upload:
        """Validate an upload header and prepare its staging directory (:func:`.upload.begin_upload`)."""
        return begin_upload(self.store, self.catalogue, self.eviction, header,
                            allow_pickle=self.settings.hub.upload_allow_pickle)

    def verify(self, name: str, repair: bool = False) -> tuple[ModelRecord, bool, list[FileCheck]]:
        """Re-hash (and with ``repair`` restore) every file of a model (:meth:`.Verifier.verify`)."""
        return self.verifier.verify(name, repair)

    # -- reads ------------------------------------------------------------------------------
    def open_file(self, name: str, path: str, offset: int = 0, limit: int = 0, chunk_size: int = 0
                  ) -> tuple[FileEntry, Iterator[tuple[int, bytes]]]:
        """A model file's entry and an iterator of (offset, data) chunks from ``offset``, at most
        ``limit`` bytes (0: to the end), ``chunk_size`` bytes each (default 1 MiB, at most 4 MiB).
        Raises InvalidArgument (bad offset/limit/chunk_size/path), NotFound (model or file),
        DataLoss (the cached file is gone; VerifyModel with repair restores it)."""
        if offset < 0:
            raise InvalidArgument("offset must not be negative", field_violations=[("offset", "negative")])
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field_violations=[("limit", "negative")])
        if chunk_size < 0 or chunk_size > MAX_CHUNK:
            raise InvalidArgument(f"chunk_size must be between 0 and {MAX_CHUNK}",
                                  field_violations=[("chunk_size", f"0..{MAX_CHUNK}")])
        rec = self.get(name)
        path = validate_file_path(path, "path")
        entry = next((f for f in rec.files if f.path == path), None)
        if entry is None:
            raise NotFound(f"models/{rec.id} has no file {path!r}", field_violations=[("path", "no such file")],
                           reason="FILE_NOT_FOUND")
        if offset > entry.size:
            raise InvalidArgument(f"offset {offset} is past the end of {path} ({entry.size} bytes)",
                                  field_violations=[("offset", f"file has {entry.size} bytes")])
        chunk = chunk_size or DEFAULT_CHUNK
        end = entry.size if not limit else min(entry.size, offset + limit)
        candidates = [rec.path / path, self.store.blob_path(entry.sha256)]
        fh = None
        for c in candidates:
            try:
                fh = open(c, "rb")  # noqa: SIM115 - closed by the generator
                break
            except OSError:
                continue
        if fh is None:
            raise DataLoss(f"models/{rec.id}/{path} is missing from the cache; run VerifyModel with repair",
                           reason="FILE_MISSING")

        def chunks() -> Iterator[tuple[int, bytes]]:
            pos = offset
            with fh:
                fh.seek(pos)
                while pos < end:
                    data = fh.read(min(chunk, end - pos))
                    if not data:
                        raise DataLoss(f"models/{rec.id}/{path} is shorter than recorded; run VerifyModel",
                                       reason="FILE_TRUNCATED")
                    BYTES_SERVED.inc(len(data))
                    yield pos, data
                    pos += len(data)

        return entry, chunks()
