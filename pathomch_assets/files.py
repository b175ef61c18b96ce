"""Files under ``data_dir``: local paths or object storage, written atomically, read through a cache.

Everything under ``data_dir`` may live on object storage: paths are then ``UPath`` objects
(fsspec) carrying their ``storage_options``.  Files are written locally and uploaded whole
(one PUT: readers never see half an object); files TensorFlow, Keras or numpy read are
fetched once into a local cache (``$PATHOMCH_CACHE_DIR``) and re-fetched when they change.
File names made from ids (slides, partition keys) are kept within the file system's limits
(:func:`safe_stem`).  No pandas, DuckDB or TensorFlow here: a tiling worker imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.parse
from pathlib import Path, PurePath


# --------------------------------------------------------------------------- paths and atomic files
def as_path(path):
    """A ``Path`` for local locations; a ``UPath`` (object storage) is returned as it is."""
    if isinstance(path, PurePath) or hasattr(path, "fs"):
        return path
    if "://" in str(path):
        from upath import UPath

        return UPath(str(path))
    return Path(path)


def is_remote(path) -> bool:
    """True for an object-storage ``UPath`` (not a local file)."""
    return not isinstance(as_path(path), PurePath)


@contextlib.contextmanager
def atomic_path(path, keep_suffix: bool = False):
    """Yield a temporary local path; publish it as ``path`` only if the block succeeds.

    Local: a rename beside the target.  Object storage: one upload of the finished file.
    Temporary names end in ``.tmp`` (never matched by the tables' ``*.parquet`` globs), or in
    ``.tmp<suffix>`` with ``keep_suffix`` (Keras picks its format from the suffix).
    """
    path = as_path(path)
    remote = is_remote(path)
    if not remote:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=f".tmp{path.suffix}" if keep_suffix else ".tmp",
        dir=None if remote else path.parent,
    )
    os.close(fd)
    try:
        yield Path(tmp)
        if remote:
            path.fs.put_file(tmp, path.path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def cache_dir() -> Path:
    return Path(os.environ.get("PATHOMCH_CACHE_DIR") or Path(tempfile.gettempdir()) / "pathomch-cache")


def local_copy(path) -> str:
    """A local file name with ``path``'s content: the file itself, or a cached download.

    The cache (fsspec ``filecache``) checks the object's identity on every call, so a file
    rewritten upstream (a re-tiled slide, a retrained model) is fetched again.
    """
    import fsspec
    from fsspec.implementations.cache_mapper import BasenameCacheMapper

    path = as_path(path)
    if not is_remote(path):
        return str(path)
    # cache names keep the object's path (and so its suffix: Keras reads the format from it)
    cache = {"cache_storage": str(cache_dir()), "check_files": True, "cache_mapper": BasenameCacheMapper(64)}
    return fsspec.open_local(f"filecache::{path}", filecache=cache, **{path.protocol: dict(path.storage_options)})


#: longest file-name stem we write: leaves room for a suffix and ``atomic_path``'s temporary name
#: within the 255-byte limit of Linux file systems (and S3's 1,024-byte keys)
MAX_STEM_BYTES = 180


def safe_stem(name: str) -> str:
    """``name`` as a file-name stem: unchanged when short enough, else its start and a hash.

    A legal slide file name can be ~250 bytes; with a suffix and a temporary prefix it would
    exceed the file system's 255-byte limit.  Long names keep their first bytes (readable in a
    listing) and end in ``~`` and 16 hex digits of their SHA-1 (distinct); the original name is
    kept in the tables (``slide_id``), never parsed back from the file name.
    """
    if len(name.encode()) <= MAX_STEM_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    head = name.encode()[: MAX_STEM_BYTES - 17].decode(errors="ignore")
    return f"{head}~{digest}"


def partition_filename(partition_key: str) -> str:
    """A file name for a partition key (``brca/TCGA-..`` -> ``brca%2FTCGA-..``); see ``safe_stem``."""
    return safe_stem(urllib.parse.quote(partition_key, safe="-_.") or "_all")
