"""The per-slide tile store: one TFRecord file of JPEG tiles per slide, written without TensorFlow.

A record is a ``tf.train.Example`` with ``image`` (JPEG bytes), ``col`` and ``row`` (int64).
Writing needs neither TensorFlow nor protobuf: the Example is three map entries encoded by
hand, and the TFRecord framing is ``uint64 length, masked CRC32C(length), payload, masked
CRC32C(payload)`` (CRC32C from ``google-crc32c``).  The bytes are those TensorFlow writes with
deterministic serialization (``test_tilestore`` compares them), so a tiling worker starts
without TensorFlow's seconds and hundreds of MB.  Reading (training, tests) goes through ``tf.data``.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant (mod 2^32)."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord_frame(payload: bytes) -> bytes:
    """One TFRecord record: length, its masked CRC32C, the payload, the payload's masked CRC32C."""
    length = struct.pack("<Q", len(payload))
    return b"".join(
        (length, struct.pack("<I", masked_crc32c(length)), payload, struct.pack("<I", masked_crc32c(payload)))
    )


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf sends it: negative numbers take 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int64_feature(key: bytes, value: int) -> bytes:
    """One entry of ``Features.feature`` (map<string, Feature>, field 1; key = 1, value = 2) holding
    ``Feature.int64_list`` (3) = ``Int64List.value`` (1, packed)."""
    return _field(1, _field(1, key) + _field(2, _field(3, _field(1, _varint(int(value))))))


def tile_example(jpeg: bytes, col: int, row: int) -> bytes:
    """A serialized ``tf.train.Example`` with ``image`` (BytesList), ``col`` and ``row`` (Int64List).

    ``image``: ``Feature.bytes_list`` (1) = ``BytesList.value`` (1).  The nested length prefixes are
    computed, so the JPEG bytes are copied once.  Entries sorted by key (col, image, row): the bytes
    equal ``Example.SerializeToString(deterministic=True)``.  (TensorFlow's default serialization
    orders map entries by a hash seeded per process, so its files differ from run to run; these do not.)
    """
    jpeg = bytes(jpeg)
    value = _varint(1 << 3 | 2) + _varint(len(jpeg))  # BytesList.value
    n = len(value) + len(jpeg)
    feature = _varint(1 << 3 | 2) + _varint(n)  # Feature.bytes_list
    n += len(feature)
    key = _field(1, b"image")
    entry_value = _varint(2 << 3 | 2) + _varint(n)
    n += len(key) + len(entry_value)
    entry = _varint(1 << 3 | 2) + _varint(n)
    col_entry, row_entry = _int64_feature(b"col", col), _int64_feature(b"row", row)
    n += len(entry) + len(col_entry) + len(row_entry)
    head = _varint(1 << 3 | 2) + _varint(n)
    return b"".join((head, col_entry, entry, key, entry_value, feature, value, jpeg, row_entry))


class TileWriter:
    """Write JPEG tiles of one slide into a TFRecord file, atomically.

    The file appears under its final name only when the writer closes without error.
    """

    def __init__(self, path: str | Path, quality: int = 90):
        # storage (atomic files, object storage) is imported here, not at module level: the
        # tiling worker imports this module and needs none of the table code
        from .files import as_path, atomic_path

        self.path, self.quality = as_path(path), quality
        self._ctx = atomic_path(self.path)
        self._aborted = False
        self._hash = hashlib.blake2b(digest_size=12)

    def __enter__(self):
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "wb", buffering=1 << 20)
        return self

    def write(self, rgb: np.ndarray, col: int, row: int) -> None:
        import imagecodecs

        self.write_jpeg(bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(rgb), level=self.quality)), col, row)

    def write_jpeg(self, jpeg: bytes, col: int, row: int) -> None:
        frame = tfrecord_frame(tile_example(jpeg, col, row))
        self._hash.update(frame)
        self._fh.write(frame)

    @property
    def digest(self) -> str:
        """BLAKE2b of the bytes written so far: the tile file's content (predictions are keyed by it)."""
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Do not publish the file (e.g. a slide with no tissue)."""
        self._aborted = True

    def __exit__(self, exc_type, exc, tb):
        self._fh.close()
        if exc_type is None and self._aborted:
            self.path.unlink(missing_ok=True)  # a stale file from an earlier run must not survive
            abort = _Aborted()
            return self._ctx.__exit__(_Aborted, abort, None)  # removes the temporary file
        return self._ctx.__exit__(exc_type, exc, tb)


class _Aborted(Exception):
    pass


def parse_tile_record(serialized):
    """``tf.data`` map function: record -> (uint8 image, col, row)."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "col": tf.io.FixedLenFeature([], tf.int64),
        "row": tf.io.FixedLenFeature([], tf.int64),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    return tf.io.decode_jpeg(ex["image"], channels=3), ex["col"], ex["row"]


def read_tiles(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of one slide as ``(images N x H x W x 3, positions N x 2 [col, row])``."""
    import tensorflow as tf

    from .files import local_copy

    images, pos = [], []
    for img, col, row in tf.data.TFRecordDataset(local_copy(path)).map(parse_tile_record):
        images.append(img.numpy())
        pos.append((int(col), int(row)))
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 2), int)
    return np.stack(images), np.asarray(pos)
