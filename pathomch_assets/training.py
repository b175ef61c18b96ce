"""Per-trait tile classifiers (SPEC 3.4): model, tf.data input, training with slide-level AUC.

Inception v3 from random initialisation with one sigmoid output, binary cross-entropy, Adam
(lr 1e-3), random horizontal and vertical flips.  Every ``1/evals_per_epoch`` epoch the model
scores the validation slides (share of tiles with p >= 0.5) and the slide-level AUC is logged
as ``val_slide_auc``, with the validation tile loss as ``val_tile_loss``.  ``training.monitor``
picks the measure Keras' ``ReduceLROnPlateau`` and ``EarlyStopping`` watch (patience 10 and 30
evaluations) and by which the best weights are kept: ``slide_auc`` (default; evaluations with
equal slide AUC, as an easy trait reaches 1.0 early, are ranked by tile loss, so training goes on
improving tile calls, which the cartography and HTI depend on) or ``tile_loss`` (the original
code's choice).  ``training.batch_size`` is the global batch of one optimizer step; with
``per_replica_batch`` set and fewer replicas than the paper's 8, gradients of several passes are
accumulated (:func:`batch_plan`).  The demo swaps in a small CNN and a smaller input through
config; the loop is the same.
"""

from __future__ import annotations

import json
import math
import os
import time
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .ensemble import slide_scores_from_tiles
from .evaluation import slide_auc
from .files import as_path, atomic_path, local_copy
from .tilestore import parse_tile_record

AUTOTUNE = -1  # tf.data.AUTOTUNE


@dataclass
class SlideSet:
    """Slides of one split with their labels and tile files."""

    slide_ids: list[str]
    files: list[str]
    labels: list[int]
    n_tiles: list[int] | None = None  # known tile counts (the `tiles` table) save reading the files

    def __len__(self):
        return len(self.slide_ids)


@dataclass
class TrainResult:
    best_val_auc: float
    best_eval: int
    evals: int
    n_train_slides: int
    n_train_tiles: int
    n_val_slides: int
    seconds: float
    history: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    monitor: str = "slide_auc"
    batch: dict = field(default_factory=dict)  # the BatchPlan used


# --------------------------------------------------------------------------- model
def build_model(
    architecture: str, input_px: int, learning_rate: float = 1e-3, seed: int = 0, accumulation_steps: int = 1
):
    """A compiled binary classifier taking uint8-valued RGB tiles of ``input_px``; with
    ``accumulation_steps`` > 1 Adam applies the mean gradient of that many passes once."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_px, input_px, 3), name="tile")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)  # Inception's [-1, 1] scaling
    if architecture == "inception_v3":
        if input_px < 75:
            raise ValueError(f"inception_v3 needs input_px >= 75, got {input_px}")
        base = keras.applications.InceptionV3(
            include_top=False, weights=None, input_shape=(input_px, input_px, 3), pooling="avg"
        )
        x = base(x)
    elif architecture == "small_cnn":
        # no batch normalisation: with a few hundred steps its moving statistics lag the
        # weights, and inference-mode outputs collapse around one value (seen on the demo)
        for filters in (16, 32, 64, 64):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    elif architecture == "compact_cnn":
        # small_cnn's depth doubled: a full-resolution 3x3 convolution before each strided one sees fine texture
        # (nuclear outlines, stroma fibres) before it is subsampled; no batch normalisation, as small_cnn
        for filters in (24, 48, 96, 96):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        raise ValueError(f"unknown architecture {architecture!r}; expected inception_v3, small_cnn or compact_cnn")
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="p_high")(x)
    model = keras.Model(inputs, outputs, name=f"pathomch_{architecture}")
    accumulate = {"gradient_accumulation_steps": accumulation_steps} if accumulation_steps > 1 else {}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, **accumulate), loss="binary_crossentropy")
    return model


# --------------------------------------------------------------------------- input
def _decode(input_px: int):
    import tensorflow as tf

    def fn(serialized):
        img, _, _ = parse_tile_record(serialized)
        img = tf.cast(img, tf.float32)
        if img.shape[0] != input_px:
            img = tf.image.resize(img, (input_px, input_px), method="area")
        return img

    return fn


def _augment(img, label):
    import tensorflow as tf

    img = tf.image.random_flip_left_right(img)
    img = tf.image.random_flip_up_down(img)
    return img, label


def train_dataset(
    slides: SlideSet,
    input_px: int,
    batch_size: int,
    seed: int,
    cache: bool = False,
    max_tiles_per_slide: int | None = None,
    deterministic: bool = False,
    augment=None,
):
    """Shuffled, augmented, endless batches of (tile, slide label); tiles read in parallel.

    ``augment`` (``training.augment``; None or ``stain: none``: the paper's random flips) with
    ``stain: hed`` jitters each tile's stain in HED space before the flips (:func:`augment.tf_augment`,
    seeded by ``seed`` and the tile's position in the stream).
    """
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices((slides.files, np.asarray(slides.labels, np.float32)))

    def per_slide(path, label):
        ds = tf.data.TFRecordDataset(path)
        if max_tiles_per_slide:
            ds = ds.shuffle(4096, seed=seed).take(max_tiles_per_slide)
        return ds.map(lambda r: (r, label))

    ds = files.shuffle(len(slides), seed=seed).interleave(
        per_slide, cycle_length=min(16, max(1, len(slides))), num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    decode = _decode(input_px)
    ds = ds.map(lambda r, y: (decode(r), y), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()
    if augment is not None and augment.stain != "none":
        from .augment import tf_augment

        jitter = tf_augment(augment.stain, augment.hed_sigma, augment.hed_bias, seed)
        ds = ds.enumerate().map(jitter, num_parallel_calls=AUTOTUNE, deterministic=deterministic or None)
    else:
        ds = ds.map(_augment, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def count_tiles(files: list[str]) -> list[int]:
    import tensorflow as tf

    return [int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda n, _: n + 1)) for f in files]


#: decoded tiles kept between runs of one process (the in-process CLI runs every model in one)
_DECODED: OrderedDict[tuple, np.ndarray] = OrderedDict()
DECODED_CACHE_BYTES = 2 * 1024**3


def decode_files(files: list[str], input_px: int, batch_size: int = 512) -> list[np.ndarray]:
    """Decoded, resized tiles of each file (uint8, N x input_px x input_px x 3), in file order.

    One ``tf.data`` pipeline reads every file (parallel decode, order kept); results are kept
    in a bounded in-process LRU cache keyed by file, modification time and size.
    """
    import tensorflow as tf

    keys = [(f, os.stat(f).st_mtime_ns, input_px) for f in files]
    todo = [i for i, k in enumerate(keys) if k not in _DECODED]
    if todo:
        names = [files[i] for i in todo]
        ds = tf.data.Dataset.from_tensor_slices((names, np.arange(len(names), dtype=np.int64)))
        ds = ds.flat_map(lambda f, i: tf.data.TFRecordDataset(f).map(lambda r: (r, i)))
        decode = _decode(input_px)
        ds = (
            ds.map(
                lambda r, i: (tf.cast(tf.round(decode(r)), tf.uint8), i),
                num_parallel_calls=AUTOTUNE,
                deterministic=True,
            )
            .batch(batch_size)
            .prefetch(AUTOTUNE)
        )
        batches, indices = [], []
        for x, i in ds:
            batches.append(x.numpy())
            indices.append(i.numpy())
        imgs = np.concatenate(batches) if batches else np.zeros((0, input_px, input_px, 3), np.uint8)
        idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        parts = np.split(imgs, np.cumsum(np.bincount(idx, minlength=len(names)))[:-1])
        for j, part in zip(todo, parts):
            _DECODED[keys[j]] = part
    out = []
    for k in keys:
        _DECODED.move_to_end(k)
        out.append(_DECODED[k])
    while sum(a.nbytes for a in _DECODED.values()) > DECODED_CACHE_BYTES and len(_DECODED) > len(keys):
        _DECODED.popitem(last=False)
    return out


def inference_batch(input_px: int) -> int:
    """Tiles per inference call: 256 at the paper's 512 px, more for small inputs, where each eager
    call's fixed cost (one dispatch per layer) outweighs the arithmetic (16 MB of float32 input a call).

    >>> inference_batch(512), inference_batch(128), inference_batch(32)
    (256, 256, 1280)
    """
    return max(256, (1 << 22) // (input_px * input_px * 3) // 256 * 256)


def traced_inference(model):
    """``model``'s forward pass as one traced TensorFlow function, kept for the model's lifetime.

    Tracing costs a fraction of a second once; an eager call of a Keras model costs one Python
    dispatch per layer every time.  Worth it for a model called many times (the kept trainer's
    validation scoring, every evaluation of every training in a process).
    """
    fn = _TRACED.get(model)
    if fn is None:
        import tensorflow as tf

        fn = _TRACED[model] = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return fn


_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_arrays(model, arrays: list[np.ndarray], batch_size: int | None = None, traced: bool = False) -> list:
    """Tile probabilities for several slides' decoded tiles, in one pass over all of them
    (through :func:`traced_inference` when ``traced``)."""
    sizes = [len(a) for a in arrays]
    if batch_size is None:
        batch_size = inference_batch(arrays[0].shape[1] if sizes and arrays[0].ndim == 4 else 512)
    if not sum(sizes):
        return [np.zeros(0, np.float32) for _ in arrays]
    x = np.concatenate([a for a in arrays if len(a)])
    import keras

    forward = traced_inference(model) if traced else (lambda b: model(b, training=False))
    p = np.concatenate(
        [
            keras.ops.convert_to_numpy(forward(x[i : i + batch_size].astype(np.float32)))[:, 0]
            for i in range(0, len(x), batch_size)
        ]
    ).astype(np.float32)
    return np.split(p, np.cumsum(sizes)[:-1])


def predict_files(model, files: list[str], input_px: int, batch_size: int | None = None) -> list[np.ndarray]:
    """Tile probabilities per file, in file order."""
    return predict_arrays(model, decode_files(files, input_px), batch_size)


# --------------------------------------------------------------------------- batch
@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step of ``global_batch`` tiles is run on ``replicas`` devices.

    Each pass feeds ``pass_batch`` tiles (``per_replica`` on each replica, as MirroredStrategy
    splits a batch); ``accumulation`` passes make one step.
    """

    global_batch: int
    replicas: int
    per_replica: int
    accumulation: int

    @property
    def pass_batch(self) -> int:
        return self.global_batch // self.accumulation


def batch_plan(global_batch: int, replicas: int = 1, per_replica_max: int | None = None) -> BatchPlan:
    """Per-replica batch and gradient-accumulation steps for a global batch (SPEC 3.4).

    Without ``per_replica_max`` every step is one pass of ``global_batch`` split over the
    replicas (the current behaviour).  With it, the fewest accumulation passes ``a`` such that
    ``global_batch = a x replicas x per_replica`` exactly, with ``per_replica <= per_replica_max``.

    Examples
    --------
    >>> batch_plan(144, 8, 18)     # the paper: 18 tiles on each of 8 GPUs
    BatchPlan(global_batch=144, replicas=8, per_replica=18, accumulation=1)
    >>> batch_plan(144, 1, 18)     # one GPU: 8 passes of 18 tiles per step
    BatchPlan(global_batch=144, replicas=1, per_replica=18, accumulation=8)
    """
    replicas = max(1, int(replicas))
    if per_replica_max is None:
        return BatchPlan(global_batch, replicas, max(1, global_batch // replicas), 1)
    for acc in range(1, global_batch + 1):
        if global_batch % (acc * replicas) == 0 and global_batch // (acc * replicas) <= per_replica_max:
            return BatchPlan(global_batch, replicas, global_batch // (acc * replicas), acc)
    raise ValueError(
        f"training.batch_size {global_batch} cannot be split evenly over {replicas} replicas; "
        f"set it to a multiple of {replicas} (the paper: 144 with per_replica_batch 18)"
    )


# --------------------------------------------------------------------------- training
#: weight of the validation tile loss in the selection score: far below one AUC step, so it only
#: orders evaluations with equal slide AUC
TIE_BREAK = 1e-3


def tile_loss(probs: list[np.ndarray], labels: list[int]) -> float:
    """Mean binary cross-entropy of validation tiles against their slide's label."""
    p = np.clip(np.concatenate(probs), 1e-7, 1 - 1e-7) if probs else np.zeros(0)
    y = np.concatenate([np.full(len(pr), lab, float) for pr, lab in zip(probs, labels)]) if probs else np.zeros(0)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if p.size else float("nan")


MONITORS = ("slide_auc", "tile_loss")


def selection_score(auc: float, loss: float, monitor: str = "slide_auc") -> float:
    """The value (higher is better) that drives LR decay, early stopping and the kept weights.

    ``slide_auc``: the validation slide AUC, equal AUCs ranked by tile loss; ``tile_loss``: minus
    the validation tile loss (the original code's choice).

    Examples
    --------
    >>> selection_score(0.9, 0.5) > selection_score(0.9, 0.6)
    True
    >>> selection_score(0.8, 0.4, "tile_loss") > selection_score(0.9, 0.5, "tile_loss")
    True
    """
    if monitor == "slide_auc":
        return auc - TIE_BREAK * loss
    if monitor == "tile_loss":
        return -loss
    raise ValueError(f"training.monitor must be one of {MONITORS}, not {monitor!r}")


def schedule_callbacks(tcfg) -> list:
    """Keras' ``ReduceLROnPlateau`` and ``EarlyStopping`` on ``val_selection`` (see :func:`selection_score`)."""
    import keras

    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_selection",
            mode="max",
            factor=tcfg.reduce_lr_factor,
            patience=tcfg.reduce_lr_patience,
            min_delta=0.0,
            verbose=0,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_selection", mode="max", patience=tcfg.early_stop_patience, min_delta=0.0, verbose=0
        ),
    ]


def _slide_auc_callback(
    val: SlideSet, input_px: int, batch_size: int | None, threshold: float, log, monitor: str = "slide_auc"
):
    import keras

    class SlideAUC(keras.callbacks.Callback):
        """Scores validation slides after each evaluation period; keeps the best weights."""

        def __init__(self):
            super().__init__()
            self.best, self.best_eval, self.best_weights, self.rows = -np.inf, -1, None, []
            self.best_selection = -np.inf

        def on_epoch_end(self, epoch, logs=None):
            probs = predict_arrays(self.model, decode_files(val.files, input_px), batch_size, traced=True)
            scores = [slide_scores_from_tiles(p, threshold) for p in probs]
            auc = slide_auc(val.labels, scores)
            loss = tile_loss(probs, val.labels)
            logs = logs if logs is not None else {}
            logs["val_slide_auc"] = auc
            logs["val_tile_loss"] = loss
            logs["val_selection"] = selection_score(auc, loss, monitor)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            self.rows.append(
                {
                    "eval": epoch + 1,
                    "loss": float(logs.get("loss", np.nan)),
                    "val_slide_auc": auc,
                    "val_tile_loss": loss,
                    "learning_rate": lr,
                }
            )
            # float32, as Keras' EarlyStopping and ReduceLROnPlateau compare (keras.ops.greater)
            if np.float32(logs["val_selection"]) > np.float32(self.best_selection):
                self.best_selection = logs["val_selection"]
                self.best, self.best_eval, self.best_weights = auc, epoch + 1, self.model.get_weights()
            log(
                f"evaluation {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}, validation slide AUC {auc:.3f}, "
                f"tile loss {loss:.4f} (best by {monitor} at {self.best_eval}), lr {lr:.2g}"
            )

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return SlideAUC()


def train_model(
    train: SlideSet, val: SlideSet, tcfg, threshold: float = 0.5, seed: int = 0, strategy=None, log=print
) -> tuple[object, TrainResult]:
    """Train one model; returns it (best weights) and a :class:`TrainResult`.

    ``tcfg`` is the ``training`` section of the configuration.
    """
    import keras

    t0 = time.perf_counter()
    n_tiles = sum(train.n_tiles if train.n_tiles is not None else count_tiles(train.files))
    if tcfg.max_tiles_per_slide:
        n_tiles = min(n_tiles, tcfg.max_tiles_per_slide * len(train))
    if n_tiles == 0 or len(set(train.labels)) < 2:
        raise ValueError(
            f"training needs tiles of both classes; got {n_tiles} tiles, labels {sorted(set(train.labels))}"
        )
    if len(set(val.labels)) < 2:
        raise ValueError(f"validation needs slides of both classes for an AUC; got {sorted(set(val.labels))}")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    plan = batch_plan(tcfg.batch_size, replicas, tcfg.per_replica_batch)
    steps_per_epoch = max(1, math.ceil(n_tiles / tcfg.batch_size))  # optimizer steps of the global batch
    steps_per_eval = max(1, math.ceil(steps_per_epoch / tcfg.evals_per_epoch))
    n_evals = max(1, math.ceil(tcfg.max_epochs * tcfg.evals_per_epoch))
    if tcfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if tcfg.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        model = build_model(tcfg.architecture, tcfg.input_px, tcfg.learning_rate, seed, plan.accumulation)
        trainer = _trainer(
            model,
            (
                tcfg.architecture,
                tcfg.input_px,
                tcfg.learning_rate,
                plan.accumulation,
                tcfg.mixed_precision,
                id(strategy),
            ),
        )
    # one pass feeds pass_batch tiles (MirroredStrategy splits them over the replicas); `accumulation` passes a step
    ds = train_dataset(
        train,
        tcfg.input_px,
        plan.pass_batch,
        seed,
        tcfg.cache_decoded,
        tcfg.max_tiles_per_slide,
        tcfg.deterministic,
        tcfg.augment,
    )
    auc_cb = _slide_auc_callback(val, tcfg.input_px, None, threshold, log, tcfg.monitor)
    callbacks = [auc_cb, *schedule_callbacks(tcfg)]
    log(
        f"training {tcfg.architecture} at {tcfg.input_px} px on {len(train)} slides ({n_tiles} tiles), "
        f"validating on {len(val)} slides every {steps_per_eval} steps, at most {n_evals} evaluations; "
        f"batch {plan.global_batch} = {plan.per_replica} per replica x {plan.replicas} replicas x "
        f"{plan.accumulation} accumulated passes; monitor {tcfg.monitor}; stain augmentation {tcfg.augment.stain}"
    )
    # the dataset is shuffled by tf.data; shuffle=False only tells Keras not to try
    trainer.fit(
        ds,
        epochs=n_evals,
        steps_per_epoch=steps_per_eval * plan.accumulation,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,
    )
    _hand_back(trainer, model)
    history = pd.DataFrame(auc_cb.rows)
    res = TrainResult(
        float(auc_cb.best),
        int(auc_cb.best_eval),
        len(history),
        len(train),
        int(n_tiles),
        len(val),
        time.perf_counter() - t0,
        history,
        tcfg.monitor,
        asdict(plan),
    )
    return model, res


#: compiled models kept between trainings of one process, by shape and optimizer settings, with the
#: optimizer's initial variable values
_TRAINERS: dict[tuple, tuple] = {}


def _trainer(model, key: tuple):
    """A compiled model of ``model``'s shape holding ``model``'s initial weights and a fresh optimizer.

    Keras traces a model's training step once per model object (seconds on a CPU, more than the
    demo's whole training); the in-process runner trains many models of one shape, so the traced
    object is kept and re-initialised: weights copied from the freshly built, seeded ``model`` and
    every optimizer variable (step counter, moments, learning rate, loss scale) set back to its
    initial value.  The result equals training ``model`` itself (test_training).
    """
    if key not in _TRAINERS:
        import keras

        trainer = keras.models.clone_model(model)
        trainer.compile(
            optimizer=keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer)), loss=model.loss
        )
        trainer.optimizer.build(trainer.trainable_variables)
        _TRAINERS.clear()  # one shape at a time: a new shape frees the old graph
        _TRAINERS[key] = (trainer, [v.numpy() for v in trainer.optimizer.variables])
    trainer, initial = _TRAINERS[key]
    trainer.set_weights(model.get_weights())
    for v, value in zip(trainer.optimizer.variables, initial, strict=True):
        v.assign(value)
    return trainer


def _hand_back(trainer, model) -> None:
    """Copy the trained weights (the best, as the callback restored them) and optimizer state into ``model``."""
    model.set_weights(trainer.get_weights())
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for dst, src in zip(model.optimizer.variables, trainer.optimizer.variables, strict=True):
        dst.assign(src)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- persistence
def save_model(model, result: TrainResult, directory: str | Path, settings: dict) -> Path:
    """``model.keras``, ``history.csv`` and ``model.json`` (settings and results), each atomically."""
    folder: Path = as_path(directory)
    path = folder / "model.keras"
    target = path
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            model.save(tmp)
        target = folder / "history.csv"
        with atomic_path(target) as t:
            result.history.to_csv(t, index=False)
        meta = {**{k: v for k, v in asdict(result).items() if k != "history"}, "settings": settings}
        target = folder / "model.json"
        with atomic_path(target) as t:
            t.write_text(json.dumps(meta, indent=1, default=str))
    except OSError as err:  # a full disk, a quota, a read-only folder: name the file (the errno alone does not)
        raise OSError(
            err.errno,
            f"cannot save the trained model: {err.strerror or err} writing {target} (free space in {folder} "
            "or point data_dir elsewhere, then materialize this partition again)",
            str(target),
        ) from err
    return path


def load_model(directory: str | Path):
    import keras

    return keras.models.load_model(local_copy(as_path(directory) / "model.keras"), compile=False)
