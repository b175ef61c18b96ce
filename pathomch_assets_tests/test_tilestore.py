"""The tile store written without TensorFlow: TensorFlow's bytes, read back by tf.data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pathomch_assets.demo_cohort import SlidePlan, compose_slide, load_source_tiles, write_pyramid
from pathomch_assets.tilestore import TileWriter, read_tiles, tfrecord_frame, tile_example


@pytest.fixture(scope="module")
def real_tiles():
    """JPEG tiles of real TCGA tissue as the tiler stores them, with positions of every varint length."""
    import imagecodecs

    sources = [t for ts in load_source_tiles().values() for t in ts][:6]
    positions = [(0, 0), (127, 128), (300, 16383), (16384, 5), (2**31, 1), (7, 2**40)]
    return [(bytes(imagecodecs.jpeg8_encode(t, level=90)), c, r) for t, (c, r) in zip(sources, positions)]


def test_records_are_the_bytes_tensorflow_writes(tmp_path, real_tiles):
    import tensorflow as tf

    with TileWriter(tmp_path / "ours.tfrecord") as w:
        for jpeg, col, row in real_tiles:
            w.write_jpeg(jpeg, col, row)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for jpeg, col, row in real_tiles:
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                        "col": tf.train.Feature(int64_list=tf.train.Int64List(value=[col])),
                        "row": tf.train.Feature(int64_list=tf.train.Int64List(value=[row])),
                    }
                )
            )
            ours = tile_example(jpeg, col, row)
            assert ours == ex.SerializeToString(deterministic=True)  # map entries sorted by key
            assert tf.train.Example.FromString(ours) == ex
            w.write(ex.SerializeToString(deterministic=True))
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    # tf.data (CRCs checked) gives back every record: the stored JPEG bytes and positions as written
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "col": tf.io.FixedLenFeature([], tf.int64),
        "row": tf.io.FixedLenFeature([], tf.int64),
    }
    back = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord"))]
    assert [(e["image"].numpy(), int(e["col"]), int(e["row"])) for e in back] == real_tiles
    images, pos = read_tiles(tmp_path / "ours.tfrecord")
    assert pos.tolist() == [[c, r] for _, c, r in real_tiles]
    for img, (jpeg, _, _) in zip(images, real_tiles):
        np.testing.assert_array_equal(img, tf.io.decode_jpeg(jpeg, channels=3).numpy())


def test_a_corrupted_record_is_caught_by_its_checksum(tmp_path, real_tiles):
    import tensorflow as tf

    path = tmp_path / "s.tfrecord"
    path.write_bytes(tfrecord_frame(tile_example(*real_tiles[0])))
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # a bit of the JPEG payload
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        list(tf.data.TFRecordDataset(str(path)))


WORKER = """
import json, sys
from pathomch_assets.tiling import TilingParams, tile_slide
res = tile_slide("c", "s", sys.argv[1], sys.argv[2], TilingParams(20, 512, threads=2))
print(json.dumps({"status": res.status, "tiles": len(res.tiles), "tensorflow": "tensorflow" in sys.modules,
                  "keras": "keras" in sys.modules}))
"""


def test_a_tiling_worker_never_imports_tensorflow(tmp_path):
    sources = load_source_tiles()
    rng = np.random.default_rng(0)
    p = SlidePlan("c", "TCGA-AA-0001-01Z-00-DX1", "s.svs", "TCGA-A1-A0SM-01Z-00-DX1", 3, 3, "aperio40_power", 0,
                  (rng.random((3, 3)) < 0.8).tolist(), np.zeros((3, 3)).tolist(), {}, {})  # fmt: skip
    write_pyramid(tmp_path / "s.svs", compose_slide(p, sources, 2), "aperio40_power")
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "s.svs"), str(tmp_path / "s.tfrecord")],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == "ok" and got["tiles"] > 0
    assert not got["tensorflow"] and not got["keras"]
    images, _ = read_tiles(tmp_path / "s.tfrecord")  # and TensorFlow reads what it wrote
    assert images.shape == (got["tiles"], 512, 512, 3)
