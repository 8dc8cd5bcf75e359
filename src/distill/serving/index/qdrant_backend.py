"""Qdrant: one collection with a named ``dense`` or ``sparse`` vector per item and the item as payload.

Embedded (no ``--url``): ``qdrant-client``'s local mode keeps the collection inside the index folder
(``qdrant/``), so it is built aside, put in place in one step and hash-checked like every index folder.
Local mode scores by brute force in Python: exact, and meant for up to tens of thousands of items.

Server (``--url http://host:6333``): the collection is created as ``<collection>-<build id>`` and the
alias ``<collection>`` is switched to it in one request once every point is in, so clients querying the
alias see the old collection or the complete new one; the index folder keeps the manifest and the items.
A build that fails removes its half-written collection. The server's HNSW is approximate; ``--exact``
makes searches scan every point.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distill.errors import InputError
from distill.serving.index.backends import BackendSettings, require

STORE_NAME = "qdrant"
BATCH = 512
TIMEOUT_S = 10
API_KEY_ENV = "QDRANT_API_KEY"

__all__ = ["QdrantIndex", "STORE_NAME", "check_server", "connect", "retire_previous"]


def connect(settings: BackendSettings, folder: Path | None = None) -> Any:
    """A client for the server at ``settings.url`` (checked to answer) or for the store embedded in ``folder``."""
    qdrant_client = require("qdrant")
    if settings.url:
        client = qdrant_client.QdrantClient(url=settings.url, api_key=os.environ.get(API_KEY_ENV), timeout=TIMEOUT_S,
                                            check_compatibility=False)
        try:
            client.get_collections()
        except Exception as error:  # connection refused, DNS, TLS, HTTP errors: qdrant-client wraps them variously
            client.close()
            reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
            raise InputError(f"--url {settings.url} does not answer ({reason}): start the Qdrant server "
                             "(docs/deployment.md) or fix the URL") from None
        return client
    assert folder is not None
    try:
        return qdrant_client.QdrantClient(path=str(folder / STORE_NAME))
    except RuntimeError as error:
        if "already accessed" in str(error):
            raise InputError(f"the embedded Qdrant store '{folder / STORE_NAME}' is open in another process (local "
                             "mode allows one at a time): wait for it, or serve the index from a Qdrant server "
                             "(--url)") from None
        raise


def check_server(settings: BackendSettings) -> None:
    """Fail early, before anything is encoded or written, when ``settings.url`` does not answer or already holds a
    collection (not an alias) named ``settings.collection``."""
    if not settings.url:
        return
    client = connect(settings)
    try:
        if any(found.name == settings.collection for found in client.get_collections().collections):
            raise InputError(f"--collection {settings.collection} is a collection on the server, not an alias distill "
                             "manages: choose another --collection")
    finally:
        client.close()


def _point_vectors(vectors: np.ndarray | sp.csr_matrix, start: int, stop: int) -> list[dict[str, Any]]:
    """The named vector of rows ``start:stop``: ``{"dense": [...]}`` or ``{"sparse": SparseVector}`` (or none)."""
    models = require("qdrant").models
    if not sp.issparse(vectors):
        return [{"dense": row.tolist()} for row in np.asarray(vectors[start:stop], dtype=np.float32)]
    out = []
    for row in range(start, stop):
        lo, hi = vectors.indptr[row], vectors.indptr[row + 1]
        terms = vectors.indices[lo:hi].tolist()
        out.append({"sparse": models.SparseVector(indices=terms, values=vectors.data[lo:hi].tolist())} if terms
                   else {})
    return out


class QdrantIndex:
    """A Qdrant collection searched through ``query_points``; rows are point ids."""

    def __init__(self, client: Any, name: str, kind: str, count: int, exact: bool, store: Path | None) -> None:
        self.client, self.name, self.kind, self.count, self.exact, self.store = client, name, kind, count, exact, store
        self.built = False

    @classmethod
    def build(cls, vectors: np.ndarray | sp.csr_matrix, items: Sequence[Any], settings: BackendSettings,
              folder: Path, build_id: str) -> "QdrantIndex":
        """Create the collection and upload every item; embedded under ``folder``, or on ``settings.url``."""
        models = require("qdrant").models
        client = connect(settings, folder)
        kind = "sparse" if sp.issparse(vectors) else "dense"
        name = f"{settings.collection}-{build_id}" if settings.url else settings.collection
        dense = {"dense": models.VectorParams(size=int(vectors.shape[1]), distance=models.Distance.DOT)}
        cluster = {"shard_number": settings.shards, "replication_factor": settings.replicas} if settings.url else {}
        client.create_collection(name, vectors_config=dense if kind == "dense" else {},
                                 sparse_vectors_config={"sparse": models.SparseVectorParams()} if kind == "sparse"
                                 else None, **cluster)
        index = cls(client, name, kind, len(items), settings.exact, None if settings.url else folder / STORE_NAME)
        try:
            index._fast_local_writes()
            index._upload(vectors, items)
            index.built = True
            if settings.url:
                index._point_alias(settings.collection)
        except BaseException:
            if settings.url:
                client.delete_collection(name)
            client.close()
            raise
        return index

    def _fast_local_writes(self) -> None:
        """Local mode commits (and syncs) once per point; a build syncs its files once at the end instead."""
        collection = getattr(getattr(self.client, "_client", None), "collections", {}).get(self.name)
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if connection is not None:
            connection.execute("PRAGMA synchronous=OFF")

    def _upload(self, vectors: np.ndarray | sp.csr_matrix, items: Sequence[Any]) -> None:
        models = require("qdrant").models
        for start in range(0, len(items), BATCH):
            stop = min(start + BATCH, len(items))
            points = [models.PointStruct(id=row, vector=vector, payload={"id": item.id, "a_id": item.a_id,
                                                                         "text": item.text})
                      for row, vector, item in zip(range(start, stop), _point_vectors(vectors, start, stop),
                                                   items[start:stop])]
            self.client.upsert(self.name, points=points, wait=True)

    def _point_alias(self, alias: str) -> None:
        """Make ``alias`` name this collection, in one request (deleting its previous target's alias)."""
        models = require("qdrant").models
        current = {entry.alias_name for entry in self.client.get_aliases().aliases}
        operations = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))] \
            if alias in current else []
        operations.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=self.name,
                                                                                      alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)

    @classmethod
    def open(cls, folder: Path, meta: dict[str, Any], settings: BackendSettings) -> "QdrantIndex":
        """The collection an index folder's manifest names, checked to hold the manifest's number of points."""
        client = connect(settings, folder)
        name, count = str(meta["collection_name"]), int(meta["count"])
        if not client.collection_exists(name):
            client.close()
            raise InputError(f"Qdrant has no collection '{name}' (index '{folder}'): rebuild it with "
                             "`python -m distill index --backend qdrant`")
        found = client.count(name, exact=True).count
        if found != count:
            client.close()
            raise InputError(f"Qdrant collection '{name}' holds {found} points, index '{folder}' {count}: rebuild it")
        return cls(client, name, meta["kind"], count, settings.exact, None if settings.url else folder / STORE_NAME)

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Bytes of the embedded store's files (0 on a server, whose storage the server reports)."""
        if self.store is None or not self.store.is_dir():
            return 0
        return sum(path.stat().st_size for path in self.store.rglob("*") if path.is_file())

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """``[Q, D]`` dense or ``[Q, V]`` sparse queries -> ``(scores [Q, k], rows [Q, k])``, best first."""
        models = require("qdrant").models
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        matrix = sp.csr_matrix(queries, dtype=np.float32) if self.kind == "sparse" else None
        count = matrix.shape[0] if matrix is not None else np.atleast_2d(queries).shape[0]
        dense = None if matrix is not None else np.atleast_2d(np.asarray(queries, dtype=np.float32))
        params = models.SearchParams(exact=True) if self.exact else None
        requests = []
        for i in range(count):
            if matrix is not None:
                lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
                query: Any = models.SparseVector(indices=matrix.indices[lo:hi].tolist(),
                                                 values=matrix.data[lo:hi].tolist())
            else:
                query = dense[i].tolist()  # type: ignore[index]
            requests.append(models.QueryRequest(query=query, using=self.kind, limit=k, params=params))
        scores = np.full((count, k), -np.inf, np.float32)
        rows = np.full((count, k), -1, np.int64)
        for i, response in enumerate(self.client.query_batch_points(self.name, requests=requests)):
            for j, point in enumerate(response.points[:k]):
                scores[i, j], rows[i, j] = point.score, int(point.id)
        return scores, rows

    def close(self) -> None:
        """Close the client; the files of an embedded store this process built are then synced to disk."""
        self.client.close()
        if self.built and self.store is not None and self.store.is_dir():
            for path in self.store.rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())



def retire_previous(settings: BackendSettings, previous: dict[str, Any] | None, current: str) -> None:
    """Delete the server collection an earlier build of the same index folder made, once the new one is in place."""
    name = (previous or {}).get("collection_name")
    if not settings.url or previous is None or previous.get("backend") != "qdrant" or not name or name == current:
        return
    if (previous.get("backend_settings") or {}).get("url") != settings.url:
        return
    client = connect(settings)
    try:
        if client.collection_exists(name):
            client.delete_collection(name)
    finally:
        client.close()
