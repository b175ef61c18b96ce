"""The training loop on real TFRecord tile files, and the paper's Inception v3."""

import numpy as np
import pytest

from pathomch_assets.config import TrainingConfig
from pathomch_assets.storage import TileWriter
from pathomch_assets.training import (SlideSet, build_model, decode_files, load_model, predict_files, save_model,
                                      train_model)


def make_slides(tmp_path, n, label_of, px=32, tiles=12, seed=0):
    """Slides whose tiles are dark (label 1) or light (label 0) textured noise."""
    rng = np.random.default_rng(seed)
    ids, files, labels = [], [], []
    for i in range(n):
        label = label_of(i)
        path = tmp_path / f"s{seed}_{i}.tfrecord"
        with TileWriter(path) as w:
            for t in range(tiles):
                base = 90 if label else 170
                w.write(np.clip(rng.normal(base, 30, (px, px, 3)), 0, 255).astype(np.uint8), t, 0)
        ids.append(f"s{i}")
        files.append(str(path))
        labels.append(label)
    return SlideSet(ids, files, labels)


def test_small_cnn_learns_and_keeps_best_weights(tmp_path):
    train = make_slides(tmp_path, 10, lambda i: i % 2, seed=1)
    val = make_slides(tmp_path, 6, lambda i: i % 2, seed=2)
    cfg = TrainingConfig(architecture="small_cnn", input_px=32, batch_size=16, evals_per_epoch=2,
                         reduce_lr_patience=1, early_stop_patience=3, max_epochs=20)
    logs = []
    model, res = train_model(train, val, cfg, seed=3, log=logs.append)
    assert res.best_val_auc == 1.0
    assert res.evals < 40  # early stopping ended it
    assert res.evals - res.best_eval == 3  # ... after 3 evaluations without gain
    hist = res.history
    assert hist["learning_rate"].iloc[-1] < hist["learning_rate"].iloc[0]  # LR was reduced on plateau
    assert any("validation slide AUC" in line for line in logs)
    probs = predict_files(model, val.files, 32)
    scores = [100 * np.mean(p >= 0.5) for p in probs]
    assert min(s for s, l in zip(scores, val.labels) if l) > max(s for s, l in zip(scores, val.labels) if not l)
    path = save_model(model, res, tmp_path / "m", {"architecture": "small_cnn"})
    again = load_model(path.parent)
    assert np.allclose(predict_files(again, val.files[:1], 32)[0], probs[0], atol=1e-5)
    assert (tmp_path / "m" / "history.csv").exists() and (tmp_path / "m" / "model.json").exists()


def test_training_refuses_one_class(tmp_path):
    one = make_slides(tmp_path, 4, lambda i: 1)
    with pytest.raises(ValueError, match="both classes"):
        train_model(one, one, TrainingConfig(architecture="small_cnn", input_px=32))


def test_decoding_resizes_and_keeps_file_order(tmp_path):
    s = make_slides(tmp_path, 3, lambda i: i % 2, px=48, tiles=5)
    arrays = decode_files(s.files[::-1], 24)
    assert [a.shape for a in arrays] == [(5, 24, 24, 3)] * 3
    # reversed order: file 2 (light, label 0), file 1 (dark, label 1), file 0 (light)
    assert arrays[0].mean() > arrays[1].mean() < arrays[2].mean()


def test_paper_inception_v3_trains_a_few_steps(tmp_path):
    """The paper's network (random init, 1 sigmoid output) through the same loop, on tiny input."""
    model = build_model("inception_v3", 75)
    assert model.count_params() > 20_000_000
    assert any(layer.name.startswith("inception_v3") for layer in model.layers)
    train = make_slides(tmp_path, 2, lambda i: i % 2, px=75, tiles=2, seed=4)
    val = make_slides(tmp_path, 2, lambda i: i % 2, px=75, tiles=2, seed=5)
    cfg = TrainingConfig(input_px=75, batch_size=2, evals_per_epoch=2, max_epochs=1)
    _, res = train_model(train, val, cfg, seed=0, log=lambda *_: None)
    assert res.evals == 2 and 0.0 <= res.best_val_auc <= 1.0
    with pytest.raises(ValueError, match="input_px >= 75"):
        build_model("inception_v3", 64)
