"""Build and open an index folder of a split's b items, encoded with an exported student.

``python -m distill index --student exports/s --data configs/demo/data.yaml --split test --out indexes/s
[--backend numpy|faiss|qdrant|seismic]`` encodes the split's b side (captions / passages) with the student's
``tower_b`` and writes the backend's files (:mod:`distill.serving.index.backends`), ``items.jsonl`` and
``items.npy`` (ids and raw texts, read by row: :mod:`distill.serving.index.items`) and ``index.json``, the
manifest: the build's id, the student's fingerprint, the backend and its settings, and every file's size and
SHA-256 (files in sub-folders included). The folder is built aside and put in place in one step; a second build
of the same folder at the same time is refused; opening checks every file against the manifest.
:mod:`distill.serving.index.query` searches it.

A build streams: the split's items are written to the item table as they are read (then once more in tie order),
the student encodes them ``chunk_size`` at a time, each chunk's vectors are appended to a ``.npy`` file in the
stored precision (``--vector-dtype``: float32 while the float32 vectors fit
:data:`~distill.serving.index.backends.FLOAT32_BUDGET`, float16 above it; sparse: CSR rows to two raw files), and
the backend is built from that file in blocks. No list of all the items
or texts is made and the vectors are held once (by the backend, or by none: the numpy backend serves the file).

A late-interaction student's index (``kind`` ``late-interaction``, FAISS only) stores every item's token vectors
(``tokens.npy``, float16 unless ``--vector-dtype float32``) with per-item offsets and a FAISS index over the tokens,
streamed the same way; :mod:`distill.serving.index.late` describes its files and its two-stage search.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from distill.errors import InputError
from distill.io import atomic_folder, atomic_write_json, folder_manifest, read_json, verify_folder
from distill.serving.index.backends import BackendSettings, VectorIndex, require, stored_dtype
from distill.serving.index.checks import check_manifest
from distill.serving.index.corpus import encode_texts, split_items
from distill.serving.index.dense import ARRAYS_NAME as DENSE_NAME
from distill.serving.index.dense import DenseIndex
from distill.serving.index.items import ITEMS_NAME, ROWS_NAME, ItemTable, write_tie_ordered
from distill.serving.index.sparse import SparseIndex, prune_top_k_rows
from distill.serving.index.vectors import SparseSpill, VectorWriter, open_vectors
from distill.serving.loading import CONFIG_NAME, read_student_config, weight_files
from distill.serving.remote_code import check_export_code

INDEX_META = "index.json"
FORMAT_VERSION = 4  # 2, 3: every text in items.json and float32 vectors, read whole into memory (no longer read)
READABLE_VERSIONS = (FORMAT_VERSION,)
REBUILD = "rebuild it with `python -m distill index`"
VECTORS_NAME = ".vectors.npy"  # the encoded dense vectors while building (the numpy backend keeps them)
ITEM_CHUNKS = 4096  # items read from the data and written to the item table at a time

__all__ = ["EXPORT_OPTIONS", "INDEX_META", "ITEMS_NAME", "ROWS_NAME", "build_index", "open_index",
           "student_fingerprint", "student_fingerprints"]


EXPORT_OPTIONS = ("onnx",)
"""Keys of ``student_config.json`` that record how an export was written, not which student it holds."""


def student_fingerprint(student_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over an export's architecture (its config without :data:`EXPORT_OPTIONS`, as canonical JSON) and
    weights files: which student encoded an index. Exporting the same weights again, with or without ONNX,
    gives the same fingerprint."""
    return student_fingerprints(student_dir)[0]


def student_fingerprints(student_dir: str | os.PathLike[str]) -> tuple[str, str]:
    """``(fingerprint, the fingerprint indexes recorded before EXPORT_OPTIONS were left out)``: the latter hashed
    the config file's bytes, so an index built then still opens with the export that built it."""
    config = read_student_config(student_dir)
    architecture = {key: value for key, value in config.items() if key not in EXPORT_OPTIONS}
    current = hashlib.sha256(json.dumps(architecture, sort_keys=True, separators=(",", ":")).encode())
    legacy = hashlib.sha256()
    for name in (CONFIG_NAME, *(entry["file"] for entry in weight_files(config))):
        path = Path(student_dir) / name
        if not path.is_file():
            raise InputError(f"'{student_dir}' is not a complete student export: it has no {name} (run `distill "
                             "export`)")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                legacy.update(block)
                if name != CONFIG_NAME:
                    current.update(block)
    return current.hexdigest(), legacy.hexdigest()


# ---------------------------------------------------------------------------- build
def _check_request(student_dir: str | os.PathLike[str], config: dict[str, Any], settings: BackendSettings,
                   weights: str, top_k: int | None) -> BackendSettings:
    """The resolved backend settings, after every check that needs no encoding (bad flags, missing extras, URL)."""
    kind = config["embedding"]["kind"]
    if kind != "sparse" and (weights != "float32" or top_k is not None):
        raise InputError(f"'{student_dir}' is a {kind} student: --weights and --top-k apply to sparse students")
    tower = config["towers"]["b"]
    if tower["modality"] != "text":
        raise InputError(f"'{student_dir}' tower b reads {tower['modality']}; `distill index` indexes text b items")
    settings = settings.resolve(kind)
    if settings.backend != "numpy":
        require(settings.backend)
        if weights != "float32":
            raise InputError(f"--weights {weights} is the numpy inverted index's format; --backend "
                             f"{settings.backend} stores float32")
    if settings.backend == "qdrant":
        from distill.serving.index.qdrant_backend import check_server

        check_server(settings)
    return settings


def _encode(student_dir: str | os.PathLike[str], config: dict[str, Any], items: ItemTable, scratch: Path,
            chunk_size: int, progress: bool, trust_remote_code: bool = False,
            dtype: str = "float16") -> Path | SparseSpill:
    """Encode the items ``chunk_size`` at a time (:func:`encode_texts` per chunk) into ``scratch``: dense vectors
    appended to ``VECTORS_NAME`` as ``dtype`` (returns its path), sparse rows to a :class:`SparseSpill`."""
    from distill.progress import progress as progress_bar
    from distill.serving.loading import load_student, load_tokenizer
    from distill.serving.student_spec import embedding_kind

    student = load_student(student_dir, trust_remote_code)
    if embedding_kind(student) != config["embedding"]["kind"]:
        raise InputError(f"'{student_dir}' holds a {type(student).__name__}, whose embeddings are "
                         f"{embedding_kind(student)}, but its {CONFIG_NAME} says {config['embedding']['kind']}: export "
                         "the student again")
    tokenizer = load_tokenizer(student_dir, trust_remote_code)
    max_length = config["towers"]["b"]["max_length"]
    sparse = config["embedding"]["kind"] == "sparse"
    sink: VectorWriter | SparseSpill = SparseSpill(scratch) if sparse else \
        VectorWriter(scratch / VECTORS_NAME, len(items), int(config["embedding"]["dim"]), dtype)
    with progress_bar(len(items), "encoding b", "texts", enabled=progress) as bar:
        for chunk in items.chunks(chunk_size):
            for encoded in encode_texts(student, tokenizer, [item.text for item in chunk], "b", max_length,
                                        chunk_size, False):
                sink.append(encoded.numpy())
            bar.update(len(chunk))
    if isinstance(sink, SparseSpill):
        return sink
    sink.close()
    return sink.path


def _build_backend(settings: BackendSettings, vectors: Path | SparseSpill, items: ItemTable, scratch: Path,
                   build_id: str, weights: str, top_k: int | None) -> tuple[Any, dict[str, Any]]:
    """Build and write the backend's files into ``scratch`` from the encoded ``vectors`` (the ``.npy`` file,
    or the spilled sparse rows); returns the index and what the manifest adds. The vector file is then removed
    (the numpy dense backend keeps it as ``dense.npy``)."""
    matrix = vectors.matrix() if isinstance(vectors, SparseSpill) else None
    try:
        if settings.backend == "qdrant":
            from distill.serving.index.qdrant_backend import QdrantIndex

            source: Any = open_vectors(vectors) if matrix is None else matrix  # type: ignore[arg-type]
            if top_k is not None:
                source = prune_top_k_rows(source, top_k)
            index = QdrantIndex.build(source, items, settings, scratch, build_id)
            index.close()
            return index, {"collection_name": index.name}
        if settings.backend == "faiss":
            from distill.serving.index.faiss_backend import FaissIndex

            built: Any = FaissIndex.build(vectors, settings)  # type: ignore[arg-type]
        elif settings.backend == "seismic":
            from distill.serving.index.seismic_backend import SeismicIndex

            built = SeismicIndex.build(matrix if top_k is None else prune_top_k_rows(matrix, top_k), settings)
        elif matrix is not None:
            built = SparseIndex.from_vectors(matrix, weights=weights, top_k=top_k)
        else:
            os.replace(vectors, scratch / DENSE_NAME)  # type: ignore[arg-type]
            built = DenseIndex(open_vectors(scratch / DENSE_NAME))
            built.save_meta(scratch)
            return built, {}
        built.save(scratch)
        return built, {}
    finally:
        del matrix
        if isinstance(vectors, SparseSpill):
            vectors.remove()
        elif vectors.exists():
            vectors.unlink()


def build_index(student_dir: str | os.PathLike[str], datamodule: Any, split: str,
                out_dir: str | os.PathLike[str], chunk_size: int = 256, progress: bool = True,
                weights: str = "float32", top_k: int | None = None, source: str = "",
                settings: BackendSettings | None = None, trust_remote_code: bool = False,
                token_candidates: int | None = None) -> Path:
    """Encode ``split``'s b side with the exported student and write the index folder ``out_dir``.

    ``settings`` picks the backend and its options (default: :class:`BackendSettings`, numpy), and for dense
    students the stored precision (``vector_dtype``, resolved by
    :func:`~distill.serving.index.backends.stored_dtype` and recorded as the manifest's ``vector_dtype``). Sparse
    students: ``weights`` picks the numpy posting format (``"float32"`` exact or ``"uint8"`` impacts, see
    :mod:`distill.serving.index.sparse`) and ``top_k`` keeps each item's ``k`` largest weights before
    indexing. ``source`` (the data file) is recorded in the manifest. Bad flags, a missing extra and a
    server that does not answer are refused before anything is encoded or written, and so is code the export
    names unless ``trust_remote_code`` (:func:`~distill.serving.remote_code.check_export_code`). Everything is
    streamed (module docstring): ``chunk_size`` items are encoded at a time. A late-interaction student's index
    records ``token_candidates`` (default :data:`~distill.serving.index.late.TOKEN_CANDIDATES`) as its search default.
    """
    config = read_student_config(student_dir)
    check_export_code(student_dir, config, allow=trust_remote_code)
    settings = _check_request(student_dir, config, settings or BackendSettings(), weights, top_k)
    if token_candidates is not None and config["embedding"]["kind"] != "late-interaction":
        raise InputError(f"--token-candidates applies to late-interaction students; '{student_dir}' is "
                         f"{config['embedding']['kind']}")
    fingerprint = student_fingerprint(student_dir)
    previous = _previous_meta(out_dir)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "kind": config["embedding"]["kind"], "build_id": uuid.uuid4().hex,
        "student": str(Path(student_dir).resolve()), "student_fingerprint": fingerprint, "data": source,
        "split": split, "side": "b", "backend": settings.backend, "backend_settings": settings.manifest(),
    }
    if meta["kind"] == "sparse":
        meta.update({"weights": weights, "top_k": top_k})
    with atomic_folder(out_dir, "index folder", kind="index") as scratch:
        items = write_tie_ordered(split_items(datamodule, split, ITEM_CHUNKS), datamodule, scratch / ITEMS_NAME,
                                  ITEM_CHUNKS)
        if not len(items):
            raise InputError(f"split '{split}' of '{source}' is empty: nothing to index")
        meta["count"] = len(items)
        if meta["kind"] == "late-interaction":
            _build_late(student_dir, config, items, scratch, settings, meta, chunk_size, progress, trust_remote_code,
                        token_candidates)
            return Path(out_dir)
        if meta["kind"] == "dense":
            dtype = stored_dtype(settings.vector_dtype, len(items), int(config["embedding"]["dim"]))
            settings = replace(settings, vector_dtype=dtype)
            meta["vector_dtype"] = "float32" if settings.backend == "qdrant" else dtype
        vectors = _encode(student_dir, config, items, scratch, chunk_size, progress, trust_remote_code,
                          settings.vector_dtype)
        index, extra = _build_backend(settings, vectors, items, scratch, meta["build_id"], weights, top_k)
        meta.update({**extra, "bytes": index.nbytes})
        atomic_write_json(scratch / INDEX_META, {**meta, "files": folder_manifest(scratch, exclude=(INDEX_META,))})
    if settings.backend == "qdrant":
        from distill.serving.index.qdrant_backend import retire_previous

        retire_previous(settings, previous, meta["collection_name"])
    return Path(out_dir)


def _build_late(student_dir: str | os.PathLike[str], config: dict[str, Any], items: ItemTable, scratch: Path,
                settings: BackendSettings, meta: dict[str, Any], chunk_size: int, progress: bool,
                trust_remote_code: bool = False, token_candidates: int | None = None) -> None:
    """A late-interaction student's index files (:mod:`distill.serving.index.late`; tokens stored as float16 unless
    ``vector_dtype`` is float32) and the manifest, in ``scratch``."""
    from distill.serving.index.late import TOKEN_CANDIDATES, build_late

    settings = replace(settings, vector_dtype="float32" if settings.vector_dtype == "float32" else "float16")
    index = build_late(student_dir, config, items, scratch, settings, chunk_size, progress, trust_remote_code,
                       token_candidates or TOKEN_CANDIDATES)
    meta.update({"vector_dtype": settings.vector_dtype, "backend_settings": settings.manifest(),
                 "bytes": index.nbytes, "tokens": len(index.tokens)})
    atomic_write_json(scratch / INDEX_META, {**meta, "files": folder_manifest(scratch, exclude=(INDEX_META,))})


def _previous_meta(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of an index already at ``out_dir`` (to retire its server collection after a rebuild)."""
    path = Path(out_dir) / INDEX_META
    try:
        meta = read_json(path) if path.is_file() else None
    except InputError:
        return None
    return meta if isinstance(meta, dict) else None


# ---------------------------------------------------------------------------- open
def settings_of(meta: dict[str, Any], url: str | None = None) -> BackendSettings:
    """The backend settings an index was built with (``url`` overrides a Qdrant server's address)."""
    known = {item.name for item in fields(BackendSettings)}
    stored = {key: value for key, value in (meta.get("backend_settings") or {}).items() if key in known}
    backend = meta.get("backend", "numpy")
    if url is not None:
        if backend != "qdrant":
            raise InputError(f"--url applies to Qdrant indexes; this one is served by {backend}")
        stored["url"] = url
    return BackendSettings(backend=backend, **stored)


def open_index(folder: str | os.PathLike[str], url: str | None = None, backend: str | None = None
               ) -> tuple[dict[str, Any], VectorIndex, ItemTable]:
    """The manifest, the index and the items (an :class:`ItemTable`, read by row when asked) of an index folder,
    after checking every file against the manifest.

    ``backend``, when given, must be the one the index was built with (checked before anything is loaded). A
    folder of an earlier format is one line that says to rebuild it.
    """
    meta_path = Path(folder) / INDEX_META
    if not meta_path.is_file():
        raise InputError(f"'{folder}' is not an index: it has no {INDEX_META} ({REBUILD})")
    meta = read_json(meta_path)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version in (2, 3):
        raise InputError(f"index '{folder}' is in format {version} (texts in items.json, float32 vectors), which this "
                         f"distill no longer reads (it reads format {FORMAT_VERSION}): {REBUILD}")
    if version not in READABLE_VERSIONS:
        raise InputError(f"'{meta_path}' has format_version {version!r}; this distill reads {READABLE_VERSIONS}: "
                         f"{REBUILD}")
    built_with = meta.get("backend", "numpy")
    if backend is not None and backend != built_with:
        raise InputError(f"--backend {backend}: index '{folder}' was built with --backend {built_with}")
    check_manifest(folder, meta, ITEMS_NAME, INDEX_META)
    if ROWS_NAME not in (meta.get("files") or {}):
        raise InputError(f"index manifest '{meta_path}' does not list {[ROWS_NAME]} in its files: {REBUILD}")
    verify_folder(folder, meta.get("files") or {}, "index", REBUILD)
    settings = settings_of(meta, url)
    try:
        items = ItemTable(Path(folder) / ITEMS_NAME)
    except ValueError as error:
        raise InputError(f"index '{folder}': {error}: {REBUILD}") from None
    try:
        index = _open_backend(Path(folder), meta, settings)
    except (ValueError, FileNotFoundError) as error:  # the backends' own checks of their files, one line
        if isinstance(error, InputError):
            raise
        raise InputError(f"index '{folder}': {error}: {REBUILD}") from None
    if len(items) != len(index) or len(items) != int(meta.get("count", -1)):
        getattr(index, "close", lambda: None)()
        raise InputError(f"index '{folder}' holds {len(index)} vectors and {len(items)} items, its manifest "
                         f"{meta.get('count')}: {REBUILD}")
    return meta, index, items


def _open_backend(folder: Path, meta: dict[str, Any], settings: BackendSettings) -> VectorIndex:
    if meta["kind"] == "late-interaction":
        from distill.serving.index.late import LateIndex

        return LateIndex.load(folder, settings)  # type: ignore[return-value]
    if settings.backend == "faiss":
        from distill.serving.index.faiss_backend import FaissIndex

        return FaissIndex.load(folder, settings)
    if settings.backend == "qdrant":
        from distill.serving.index.qdrant_backend import QdrantIndex

        return QdrantIndex.open(folder, meta, settings)
    if settings.backend == "seismic":
        from distill.serving.index.seismic_backend import SeismicIndex

        return SeismicIndex.load(folder, settings)
    if settings.backend != "numpy":
        raise InputError(f"index '{folder}' uses backend {settings.backend!r}, which this distill does not know: "
                         f"{REBUILD}")
    return SparseIndex.load(folder) if meta["kind"] == "sparse" else DenseIndex.load(folder)
