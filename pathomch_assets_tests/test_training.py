"""The training loop on real TFRecord tile files, and the paper's Inception v3."""

import numpy as np
import pandas as pd
import pytest

from pathomch_assets.config import TrainingConfig
from pathomch_assets.tilestore import TileWriter
from pathomch_assets.training import (
    SlideSet,
    build_model,
    decode_files,
    load_model,
    predict_files,
    save_model,
    train_model,
)


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
    cfg = TrainingConfig(
        architecture="small_cnn",
        input_px=32,
        batch_size=16,
        evals_per_epoch=2,
        reduce_lr_patience=1,
        early_stop_patience=3,
        max_epochs=20,
    )
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
    assert min(s for s, y in zip(scores, val.labels) if y) > max(s for s, y in zip(scores, val.labels) if not y)
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


# ---------------------------------------------------------------- the paper's batch (issue 16)
@pytest.mark.parametrize("replicas, per_replica, accumulation", [(8, 18, 1), (1, 18, 8), (2, 18, 4), (3, 16, 3)])
def test_paper_batch_per_replica_and_accumulation(replicas, per_replica, accumulation):
    """144 tiles per step: 18 on each of 8 GPUs (paper), or accumulated passes on fewer devices."""
    from pathomch_assets.training import batch_plan

    plan = batch_plan(144, replicas, 18)
    assert (plan.per_replica, plan.accumulation) == (per_replica, accumulation)
    assert plan.per_replica * plan.replicas * plan.accumulation == 144 and plan.pass_batch * accumulation == 144


def test_batch_without_per_replica_cap_is_one_pass_of_the_global_batch():
    from pathomch_assets.training import batch_plan

    assert batch_plan(64, 1).pass_batch == 64 and batch_plan(64, 1).accumulation == 1  # the demo, unchanged
    assert batch_plan(32, 8).per_replica == 4 and batch_plan(32, 8).pass_batch == 32
    with pytest.raises(ValueError, match="multiple of 5"):
        batch_plan(144, 5, 18)


def test_accumulated_passes_make_one_step_of_the_global_batch(tmp_path):
    """One replica, per_replica_batch 4, batch_size 16: Adam applies one update per 4 passes of 4 tiles."""
    train = make_slides(tmp_path, 4, lambda i: i % 2, seed=6)
    val = make_slides(tmp_path, 2, lambda i: i % 2, seed=7)
    cfg = TrainingConfig(
        architecture="small_cnn", input_px=32, batch_size=16, per_replica_batch=4, evals_per_epoch=1, max_epochs=2
    )
    model, res = train_model(train, val, cfg, seed=0, log=lambda *_: None)
    steps = res.evals * 3  # 48 training tiles / 16 per step
    assert res.batch == {"global_batch": 16, "replicas": 1, "per_replica": 4, "accumulation": 4}
    assert int(model.optimizer.iterations) == steps and int(model.optimizer._iterations) == 4 * steps


# ---------------------------------------------------------------- training.monitor (issue 16)
def drive_schedule(monitor, history):
    """Keras' ReduceLROnPlateau and EarlyStopping, as train_model builds them, fed a constructed
    validation history of (slide AUC, tile loss); returns (first decay, stop, best) evaluation."""
    import keras

    from pathomch_assets.training import schedule_callbacks, selection_score

    cfg = TrainingConfig(monitor=monitor, reduce_lr_patience=3, early_stop_patience=6)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callbacks = schedule_callbacks(cfg)
    for cb in callbacks:
        cb.set_model(model)
        cb.on_train_begin()
    decay = stop = None
    scores = []
    for i, (auc, loss) in enumerate(history, start=1):
        scores.append(selection_score(auc, loss, monitor))
        for cb in callbacks:
            cb.on_epoch_end(i - 1, {"val_selection": scores[-1]})
        if decay is None and float(model.optimizer.learning_rate) < 1e-3:
            decay = i
        if model.stop_training:
            stop = i
            break
    return decay, stop, int(np.argmax(scores)) + 1


def test_monitor_changes_decay_stop_and_kept_evaluation():
    # slide AUC keeps improving while the tile loss is best at evaluation 2 and then worsens
    history = [(0.60 + 0.02 * i, 0.50 if i == 2 else 0.55 + 0.01 * i) for i in range(1, 13)]
    assert drive_schedule("slide_auc", history) == (None, None, 12)
    assert drive_schedule("tile_loss", history) == (5, 8, 2)  # the 3rd and 6th evaluation without a lower loss


def test_tile_loss_monitor_in_a_tiny_training(tmp_path):
    train = make_slides(tmp_path, 6, lambda i: i % 2, seed=8)
    val = make_slides(tmp_path, 4, lambda i: i % 2, seed=9)
    cfg = TrainingConfig(
        architecture="small_cnn",
        input_px=32,
        batch_size=16,
        evals_per_epoch=2,
        reduce_lr_patience=1,
        early_stop_patience=2,
        max_epochs=10,
        monitor="tile_loss",
    )
    _, res = train_model(train, val, cfg, seed=3, log=lambda *_: None)
    h = res.history
    assert res.monitor == "tile_loss"
    assert res.best_eval == int(h["val_tile_loss"].idxmin()) + 1  # weights kept at the lowest tile loss
    assert res.evals == len(h) and (res.evals == 20 or res.evals - res.best_eval == 2)


@pytest.mark.parametrize("cache_decoded", [False, True])
def test_reused_trainer_equals_a_fresh_model(tmp_path, cache_decoded):
    """The in-process runner trains many models of one shape on one traced Keras model; re-initialised,
    it must give the same weights and history as a model trained in a fresh state."""
    from pathomch_assets import training

    train = make_slides(tmp_path, 8, lambda i: i % 2, seed=4)
    val = make_slides(tmp_path, 4, lambda i: i % 2, seed=5)
    cfg = TrainingConfig(
        architecture="small_cnn",
        input_px=32,
        batch_size=16,
        evals_per_epoch=2,
        max_epochs=2,
        deterministic=True,
        cache_decoded=cache_decoded,  # True: tiles from the in-process decoded cache
    )
    training._TRAINERS.clear()
    first, res1 = train_model(train, val, cfg, seed=7, log=lambda _: None)
    ((trainer, _),) = training._TRAINERS.values()
    traced = trainer.train_function
    other, _ = train_model(train, val, cfg, seed=8, log=lambda _: None)  # moves weights, moments and step count
    again, res2 = train_model(train, val, cfg, seed=7, log=lambda _: None)
    assert training._TRAINERS[next(iter(training._TRAINERS))][0].train_function is traced  # not traced again
    for a, b in zip(first.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), other.get_weights()))
    pd.testing.assert_frame_equal(res1.history, res2.history)
    assert first is not again  # each caller gets a model of its own


def test_compact_cnn_scores_tiles_and_unknown_architectures_are_named():
    model = build_model("compact_cnn", 32, seed=0)
    p = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert tuple(p.shape) == (2, 1) and np.all((np.asarray(p) > 0) & (np.asarray(p) < 1))
    assert len(model.layers) > len(build_model("small_cnn", 32, seed=0).layers)  # deeper than small_cnn
    with pytest.raises(ValueError, match="compact_cnn"):
        build_model("resnet", 32)
