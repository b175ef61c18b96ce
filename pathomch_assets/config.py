"""Deployment configuration: one YAML file, chosen by ``PATHOMCH_CONFIG``.

Every setting has the paper's value as its default (SPEC 3); a deployment names only its
cohorts and output locations.  Relative paths are resolved against the YAML file's folder.
Errors name the file and the key that is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError  # raised here; callers import it from config
from .slides import MAX_MAGNIFICATION, MIN_MAGNIFICATION  # the bounds of a target and of a slide's own

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_CONFIG = PACKAGE_DIR / "configs" / "demo.yaml"
ENV_VAR = "PATHOMCH_CONFIG"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COHORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    # no .inf/.nan anywhere: no setting means anything at infinity
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TilingConfig(_Strict):
    """SPEC 3.3: non-overlapping tiles at a target magnification, background filtered."""

    magnification: float = Field(
        20.0, ge=MIN_MAGNIFICATION, le=MAX_MAGNIFICATION, description="target objective power (20x = 0.5 um/px)"
    )
    tile_px: int = Field(512, ge=16, le=4096)
    background_threshold: int = Field(
        220, ge=0, le=255, description="a pixel is background when all channels exceed this"
    )
    max_background_fraction: float = Field(0.5, ge=0, le=1)
    jpeg_quality: int = Field(90, ge=50, le=100)
    workers: int = Field(2, ge=1, le=512, description="slides tiled in parallel (processes)")
    threads_per_slide: int = Field(2, ge=1, le=256, description="threads reading one slide's rows")
    reader: Literal["auto", "openslide"] = Field(
        "auto",
        description="auto: decode a tiled TIFF page that is exactly the "
        "chosen level directly (same pixels, about 3x cheaper); openslide: always read_region",
    )
    scaled_decode: bool = Field(
        True,
        description="where the level read is 2, 4 or 8 times the target magnification (a 40x slide with no 20x "
        "level, tiled at 20x) and its TIFF tiles are JPEG, decode them at 1/2, 1/4 or 1/8 scale in the DCT domain "
        "(libjpeg-turbo) instead of whole and resampled: cheaper, pixels within a few grey levels of the exact "
        "path (docs/performance.md); false: the exact path (full decode, box resize)",
    )
    min_tiles_per_slide: int = Field(5, ge=1, description="fewer tissue tiles than this is flagged by an asset check")
    magnification_tolerance: float = Field(
        0.05, ge=0, lt=0.5, description="relative; a level this close to the target is read as is"
    )


class QcConfig(_Strict):
    """Artifact QC per tile at tiling time (issue 28; ``pathomch_assets.qc``, docs/qc-and-stain.md).

    A tissue tile whose pen share, blur or dark share fails is not written to the slide's tile file (so no
    training, scoring, map or HTI sees it); its ``tiles`` row stays, without ``idx``, with the ``qc`` reason.
    Defaults flag none of the 80 shipped TCGA tiles.  Part of the tiling settings: changing them re-tiles.
    """

    enabled: bool = Field(True, description="measure pen ink, blur and dark tissue per tile and drop failing tiles")
    max_pen: float = Field(
        0.02, gt=0, le=1, description="a tile is dropped when at least this share of its pixels is pen ink"
    )
    min_blur: float = Field(
        150.0,
        ge=0,
        le=100000,
        description="a tile is dropped as blurred when the variance of its Laplacian (green channel, tissue "
        "pixels, the tile's own scale) is below this; sharp 20x tissue: 600-2,100, a 1.5 px Gaussian blur: < 110",
    )
    max_dark: float = Field(
        0.3, gt=0, le=1, description="a tile is dropped as dark/folded when at least this share of it is dark"
    )
    dark_level: int = Field(80, ge=0, le=255, description="a pixel is dark when its mean grey level is at most this")
    black_level: int = Field(
        30, ge=0, le=127, description="a pixel is black ink when every channel is at most this (or at most twice "
        "this and nearly grey)"
    )  # fmt: skip
    ink_saturation: float = Field(
        0.45, gt=0, le=1, description="HSV saturation from which a green or blue pixel (hue 60-230) is ink"
    )
    stride: int = Field(8, ge=1, le=64, description="pen and dark shares are counted on every stride-th pixel")


class StainConfig(_Strict):
    """Stain statistics and optional normalisation at tiling time (issue 28; ``pathomch_assets.stain``).

    Each tiled slide gets a ``stain`` row (Macenko H and E vectors, concentration percentiles).  With
    ``normalize`` set, every kept tile is normalised before it is encoded, so training and scoring read the
    same normalised tiles; the target and method are part of the tiling settings (changing them re-tiles).
    """

    normalize: Literal["none", "macenko", "reinhard"] = Field(
        "none", description="none (the paper): tiles as scanned; macenko or reinhard: normalised to the target"
    )
    reference: Path | None = Field(
        None,
        description="a folder of tiles or one image the target is fitted on; none: the documented default "
        "target (docs/qc-and-stain.md)",
    )
    sample_tiles: int = Field(
        64, ge=4, le=4096, description="tiles sampled per slide for the stain estimate a normalisation uses"
    )


class LabelConfig(_Strict):
    """SPEC 3.2: percentile labels and out-of-distribution subsets."""

    low_percentile: float = Field(20.0, gt=0, lt=50)
    high_percentile: float = Field(80.0, gt=50, lt=100)
    ood_near_width: float = Field(10.0, gt=0, le=30)


class SplitConfig(_Strict):
    """SPEC 3.1: subject-level splits, frozen; per patient (the paper's) or keeping each tissue source site whole."""

    test_fraction: float = Field(0.10, gt=0, lt=1)
    val_fraction: float = Field(0.10, gt=0, lt=1, description="share of all patients; the rest is train (80/10)")
    rounds: int = Field(5, ge=1, le=20)
    method: Literal["patient", "site_preserved"] = Field(
        "patient",
        description="patient: the paper's per-patient hash split; site_preserved: every tissue source site whole in "
        "one split (test and validation sites never train), class balance per trait solved exactly "
        "(docs/sites-and-splits.md)",
    )
    solver_node_limit: int = Field(
        20000,
        ge=100,
        le=10_000_000,
        description="site_preserved: branch-and-bound nodes per solver step (no time limit, so results never "
        "depend on the machine's speed); a step that reaches it keeps its best split and says so",
    )

    @model_validator(mode="after")
    def _fractions(self):
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must be below 1")
        return self


#: most tiles in one training batch: 4096 tiles of 512 px are 3 GiB of decoded pixels before the network's
#: activations (Inception v3 needs about 100 MB per tile in training), beyond any one machine's memory
MAX_BATCH = 4096


class AugmentConfig(_Strict):
    """Training-only augmentation beyond the paper's random flips (issue 28): stain jitter in HED space."""

    stain: Literal["none", "hed"] = Field(
        "none",
        description="none: flips only (the paper); hed: per-tile random scale and shift of the haematoxylin, eosin "
        "and DAB concentrations (Tellez et al. 2019), then the flips; scoring never sees it",
    )
    hed_sigma: float = Field(
        0.05, ge=0, le=0.5, description="stain scale drawn from U(1 - hed_sigma, 1 + hed_sigma) (HED-light 0.05)"
    )
    hed_bias: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="stain shift drawn from U(-hed_bias, hed_bias), in optical density (HED-light: 0.05)",
    )


class TrainingConfig(_Strict):
    """SPEC 3.4.  The demo shrinks input size and steps; the code path is the same."""

    architecture: Literal["inception_v3", "small_cnn", "compact_cnn"] = Field(
        "inception_v3",
        description="inception_v3 (the paper); small_cnn: four strided 3x3 convolutions (the demo); compact_cnn: "
        "small_cnn with a full-resolution convolution before each strided one (docs/learning-small-cohorts.md)",
    )
    input_px: int = Field(512, ge=16, le=1024, description="tiles are resized to this before the network")
    batch_size: int = Field(
        32,
        ge=1,
        le=MAX_BATCH,
        description="global batch: tiles per optimizer step, over all replicas (paper: 144 = 18 per GPU x 8 GPUs; "
        f"at most {MAX_BATCH}: a step holds the whole batch of decoded tiles in memory)",
    )
    per_replica_batch: int | None = Field(
        None,
        ge=1,
        le=MAX_BATCH,
        description="most tiles one replica (GPU) takes per pass; "
        "with fewer replicas than batch_size / per_replica_batch, gradients of "
        "several passes are accumulated so that each step still sees batch_size "
        "tiles (None: batch_size / replicas, no accumulation)",
    )
    learning_rate: float = Field(1e-3, gt=0)
    evals_per_epoch: int = Field(16, ge=1, description="validation by slide-level AUC every 1/N epoch")
    reduce_lr_patience: int = Field(10, ge=1, description="evaluations without AUC gain before the LR is reduced")
    reduce_lr_factor: float = Field(0.1, gt=0, lt=1)
    early_stop_patience: int = Field(30, ge=1, description="evaluations without AUC gain before training stops")
    monitor: Literal["slide_auc", "tile_loss"] = Field(
        "slide_auc",
        description="validation measure for learning-rate decay, early stopping and the kept weights: "
        "slide_auc (SPEC 3.4; equal AUCs ranked by tile loss) or tile_loss (the original PathoMCH code's choice)",
    )
    max_epochs: float = Field(100.0, gt=0)
    max_tiles_per_slide: int | None = Field(None, ge=1, description="cap on tiles per slide per epoch (None: all)")
    mixed_precision: bool = False
    cache_decoded: bool = Field(False, description="keep decoded tiles in memory (small cohorts only)")
    deterministic: bool = Field(
        False, description="reproducible training (TensorFlow op determinism, ordered input); slower, notably on GPUs"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training-only augmentation")


class EnsembleConfig(_Strict):
    """SPEC 3.5-3.6."""

    size: int = Field(3, ge=1)
    min_votes: int = Field(2, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _votes(self):
        if self.min_votes > self.size:
            raise ValueError("min_votes cannot exceed size")
        return self


class SurvivalConfig(_Strict):
    """SPEC 3.10: HTI groups."""

    hti_split: float = Field(0.5, ge=0, le=1)
    contrast_low: float = Field(0.3, ge=0, le=1)
    contrast_high: float = Field(0.7, ge=0, le=1)


class MapsConfig(_Strict):
    """Issue 29: the validity gate, which traits feed maps, HTI and survival (``validity``; not in the paper,
    which mapped every trait).  A trait feeds them when the lower bound of its held-out validation AUC's
    interval is at least ``min_auc``.  0.6 (bench/validity_gate.py, measured 2026-12-04): with the kept
    checkpoint picked on the validation set (checkpoints correlated 0.9), a model at chance clears 0.6 in 5% of
    simulated demo-sized cohorts and 2% of paper-sized ones (0.5: 30-42%, 0.55: 8-10%), while a model of true
    AUC 0.7 clears it in 78% (demo) and 99% (paper) and one of 0.8 in 97-100%; docs/validity-and-sites.md."""

    min_auc: float = Field(
        0.6, ge=0.5, le=1, description="lowest accepted lower confidence bound of the held-out validation AUC"
    )
    include_invalid: bool = Field(
        False, description="keep traits that fail the gate in maps, HTI and survival, flagged in every hti row"
    )
    confidence: float = Field(0.95, ge=0.5, lt=1, description="level of the bootstrap interval")
    bootstrap: int = Field(2000, ge=100, le=100000, description="bootstrap resamples (over patients)")


class SiteEffectsConfig(_Strict):
    """Issue 28: site effects per trait (``site_effects``).  ``alpha`` 0.01 rather than 0.05: a cohort has
    several traits and the flag is a warning, not a finding; at 0.05 one trait in ten would be flagged by chance."""

    alpha: float = Field(
        0.01, gt=0, lt=1, description="a trait is site_dependent when its labels-by-site test p-value is below this"
    )


class SensorConfig(_Strict):
    """The new-slide sensor (``dagster dev``): how often it looks, how much it asks per look, and how it retries
    a slide whose run failed (the n-th retry ``retry_backoff_s * 2**(n-1)`` seconds after the failure); and how
    often the automation sensor evaluates the eager refresh of the cohort-level assets."""

    interval_s: int = Field(60, ge=1, le=86400, description="seconds between two looks at the slide folders")
    max_runs_per_tick: int = Field(500, ge=1, le=100000, description="runs requested per look; the rest follow")
    max_retries: int = Field(3, ge=0, le=100, description="retries of a slide whose run failed, then it is tagged")
    retry_backoff_s: float = Field(120, ge=0, le=86400, description="wait before the first retry (doubles each time)")
    automation_interval_s: int = Field(
        30, ge=5, le=86400, description="seconds between two evaluations of the automation conditions (eager refresh)"
    )


class CohortConfig(_Strict):
    """One cohort: where its slides and molecular tables are, and which traits to model."""

    slides_dir: Path
    mrna: Path
    mirna: Path | None = None
    clinical: Path | None = None
    manifest: Path | None = Field(None, description="GDC manifest; when given, only its slides are used")
    traits: list[str] = Field(min_length=1)
    survival_pairs: list[list[str]] = Field(
        default_factory=list, description="empty: the two traits with the best ensemble test AUC"
    )
    hti_sets: list[list[str]] = Field(default_factory=list, description="extra trait sets for HTI (any size)")
    default_magnification: float | None = Field(
        None,
        ge=MIN_MAGNIFICATION,
        le=MAX_MAGNIFICATION,
        description="used when a slide has neither mpp nor objective power",
    )
    allowed_dirs: list[Path] = Field(
        default_factory=list,
        description="folders outside slides_dir that slides "
        "(or the links in slides_dir) may resolve into; nothing else is read",
    )
    diagnostic_only: bool = True
    site_file: Path | None = Field(
        None,
        description="CSV or TSV with columns patient_id and site: each patient's tissue source site (wins over the "
        "TCGA barcode's); needed by splits.method site_preserved for patients that are not TCGA barcodes",
    )
    er_status_column: str = "ER_STATUS_BY_IHC"
    subtype_column: str = "SUBTYPE"

    @field_validator("traits")
    @classmethod
    def _unique_traits(cls, traits: list[str]) -> list[str]:
        dup = sorted({t for t in traits if traits.count(t) > 1})
        if dup:
            raise ValueError(f"traits listed twice: {dup}")
        rows: dict[str, str] = {}
        for t in traits:  # miR-17-5p and hsa-miR-17-5p are one row of the miRNA table: one would have no values
            row = mirna_name(t) if is_mirna(t) else t
            if row in rows:
                raise ValueError(f"traits {rows[row]!r} and {t!r} are the same miRNA ({row}): keep one")
            rows[row] = t
        for t in traits:
            if not _NAME.match(t):
                raise ValueError(f"trait {t!r} may only hold letters, digits, '_', '.', '-'")
        return traits

    @model_validator(mode="after")
    def _sets_use_known_traits(self):
        for group in [*self.survival_pairs, *self.hti_sets]:
            unknown = [t for t in group if t not in self.traits]
            if unknown:
                raise ValueError(f"trait set {group} names traits not in 'traits': {unknown}")
        for pair in self.survival_pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"survival_pairs entries are two different traits, got {pair}")
        if any(is_mirna(t) for t in self.traits) and self.mirna is None:
            raise ValueError("a miRNA trait is configured but 'mirna' (the miRNA table) is not")
        return self

    def all_paths(self) -> dict[str, Path | None]:
        return {
            "slides_dir": self.slides_dir,
            "mrna": self.mrna,
            "mirna": self.mirna,
            "clinical": self.clinical,
            "manifest": self.manifest,
            "site_file": self.site_file,
        }


class PathomchConfig(_Strict):
    data_dir: Path | str = Field(
        description="outputs: a folder, or an fsspec URL (s3://bucket/prefix, gs://..., "
        "memory://...) for tiles, models, maps and tables on object storage"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for a data_dir URL "
        "(e.g. endpoint_url for MinIO); credentials come from the environment",
    )
    duckdb_path: Path
    seed: int = 2020
    cohorts: dict[str, CohortConfig] = Field(min_length=1)
    tiling: TilingConfig = TilingConfig()
    qc: QcConfig = QcConfig()
    stain: StainConfig = StainConfig()
    labels: LabelConfig = LabelConfig()
    splits: SplitConfig = SplitConfig()
    training: TrainingConfig = TrainingConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    survival: SurvivalConfig = SurvivalConfig()
    maps: MapsConfig = MapsConfig()
    site_effects: SiteEffectsConfig = SiteEffectsConfig()
    sensor: SensorConfig = SensorConfig()
    source: Path | None = Field(None, description="the YAML file this was read from (set by the loader)")

    @field_validator("cohorts")
    @classmethod
    def _cohort_names(cls, cohorts: dict[str, CohortConfig]) -> dict[str, CohortConfig]:
        for name in cohorts:
            if not _COHORT.match(name):  # a Dagster name: the prefix of its asset keys, its group and its jobs
                raise ValueError(f"cohort name {name!r} may only hold letters, digits and '_' (e.g. brca, tcga_luad)")
        return cohorts

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir(cls, value):
        return value if is_url(value) else Path(value)

    @field_validator("duckdb_path", mode="before")
    @classmethod
    def _local_duckdb(cls, value):
        if is_url(value):
            raise ValueError(
                "must be a local file (the DuckDB views read the Parquet tables under data_dir, wherever that is)"
            )
        if isinstance(value, (str, os.PathLike)) and str(value) and Path(value).is_dir():
            raise ValueError(f"{value} is a folder; give a file path inside it, e.g. {Path(value) / 'pathomch.duckdb'}")
        return value

    @property
    def output_root(self):
        """``data_dir`` as a path: a ``pathlib.Path``, or a ``UPath`` carrying ``storage_options``."""
        if isinstance(self.data_dir, Path):
            return self.data_dir
        from upath import UPath

        return UPath(self.data_dir, **self.storage_options)

    @model_validator(mode="after")
    def _ensemble_fits_rounds(self):
        if self.ensemble.size > self.splits.rounds:
            raise ValueError(f"ensemble.size {self.ensemble.size} exceeds splits.rounds {self.splits.rounds}")
        return self

    # ---- derived names shared by assets, partitions and tables ----
    def targets(self) -> list[str]:
        """Partition keys ``cohort/trait`` for every configured trait."""
        return [target_key(c, t) for c, cfg in self.cohorts.items() for t in cfg.traits]

    def round_names(self) -> list[str]:
        from .layout import round_name

        return [round_name(i) for i in range(self.splits.rounds)]

    @property
    def tiles_dir(self) -> Path:
        return self.output_root / "tiles"

    @property
    def models_dir(self) -> Path:
        return self.output_root / "models"

    @property
    def tables_dir(self) -> Path:
        return self.output_root / "tables"

    @property
    def maps_dir(self) -> Path:
        return self.output_root / "cartography"


def is_mirna(trait: str) -> bool:
    """SPEC 2: a trait starting with ``miR-``, ``hsa-miR-`` or ``let-`` is a miRNA."""
    return trait.startswith(("miR-", "hsa-miR-", "let-", "hsa-let-"))


def mirna_name(trait: str) -> str:
    """``miR-17-5p`` -> ``hsa-miR-17-5p`` (the PanCanAtlas row name).

    Examples
    --------
    >>> mirna_name("miR-17-5p"), mirna_name("hsa-miR-17-5p")
    ('hsa-miR-17-5p', 'hsa-miR-17-5p')
    """
    return trait if trait.startswith("hsa-") else f"hsa-{trait}"


def default(model: type[BaseModel], name: str) -> Any:
    """The default of setting ``name`` of a settings model: the one home of a setting's default, read by the plain
    parameter classes that mirror a section (``tiling.TilingParams``, ``qc.QcParams``).

    Examples
    --------
    >>> default(TilingConfig, "tile_px")
    512
    """
    return model.model_fields[name].default


def target_key(cohort: str, trait: str) -> str:
    return f"{cohort}/{trait}"


def split_target(key: str) -> tuple[str, str]:
    cohort, _, trait = key.partition("/")
    return cohort, trait


def is_url(value) -> bool:
    """``s3://...``-style locations (fsspec URLs); ``file://`` counts as local."""
    return isinstance(value, str) and "://" in value and not value.startswith("file://")


def _resolve(value, base: Path):
    if isinstance(value, str) and value.startswith("file://"):
        value = value[len("file://") :]
    if isinstance(value, str) and value and not os.path.isabs(value) and not is_url(value):
        return str((base / value).resolve())
    return value


_PATH_KEYS = {"slides_dir", "mrna", "mirna", "clinical", "manifest", "site_file", "data_dir", "duckdb_path"}
_PATH_LIST_KEYS = {"allowed_dirs"}


def _resolve_key(key, value, base: Path):
    if key in _PATH_KEYS:
        return _resolve(value, base)
    if key in _PATH_LIST_KEYS and isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def _resolve_paths(raw: dict, base: Path) -> dict:
    out = {k: _resolve_key(k, v, base) for k, v in raw.items()}
    if isinstance(out.get("stain"), dict) and "reference" in out["stain"]:
        out["stain"] = {**out["stain"], "reference": _resolve(out["stain"]["reference"], base)}
    if isinstance(out.get("cohorts"), dict):
        out["cohorts"] = {
            name: ({k: _resolve_key(k, v, base) for k, v in c.items()} if isinstance(c, dict) else c)
            for name, c in out["cohorts"].items()
        }
    return out


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] in _BOUNDS and (what := _field_description(e["loc"])):
            msg += f" ({what})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


_BOUNDS = ("less_than_equal", "less_than", "greater_than_equal", "greater_than")


def _field_description(loc) -> str | None:
    """The description of the setting at ``loc`` (a bound broken: say what the setting is and why the bound)."""
    model: Any = PathomchConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or str(part) not in fields:
            return None
        field = fields[str(part)]
        model = field.annotation
    return field.description if field is not None else None


def parse_config(raw: dict, source: Path, check_files: bool = True) -> PathomchConfig:
    """Validate a mapping as read from ``source``; relative paths are taken from its folder."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(raw).__name__}")
    resolved = _resolve_paths(raw, source.parent)
    resolved["source"] = str(source)
    try:
        cfg = PathomchConfig.model_validate(resolved)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None
    if check_files:
        missing = [
            f"  cohorts.{name}.{key}: {p} does not exist"
            for name, c in cfg.cohorts.items()
            for key, p in [*c.all_paths().items(), *(("allowed_dirs", d) for d in c.allowed_dirs)]
            if p is not None and not Path(p).exists()
        ]
        if cfg.stain.reference is not None and not Path(cfg.stain.reference).exists():
            missing.append(f"  stain.reference: {cfg.stain.reference} does not exist")
        if missing:
            raise ConfigError(f"{source}: missing input files\n" + "\n".join(missing))
        for key, folder in (("data_dir", cfg.data_dir), ("duckdb_path", cfg.duckdb_path.parent)):
            problem = unwritable(folder)
            if problem:
                raise ConfigError(f"{source}: {key}: {problem}")
    return cfg


def unwritable(folder) -> str | None:
    """Why outputs cannot be written under a local ``folder`` (created if missing), or ``None``.

    Checks the folder, or the nearest existing folder above it, for write permission; URLs are not checked.
    """
    if not isinstance(folder, Path):
        return None
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{folder} cannot be created: {probe} is a file, not a folder; choose another location"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is read-only" if probe == folder else f"cannot be created: {probe} is read-only"
        return (
            f"{folder} {what} for this user; make it writable (chmod u+w {probe}) or set another folder "
            f"in the configuration"
        )
    return None


def load_config(path: str | os.PathLike | None = None, check_files: bool = True) -> PathomchConfig:
    """Read the YAML at ``path``, else ``$PATHOMCH_CONFIG``, else the shipped demo config."""
    path = Path(path or os.environ.get(ENV_VAR) or DEMO_CONFIG).resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found (set {ENV_VAR} or pass --config)")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8-sig")) or {}
    except DuplicateKeyError as err:
        raise ConfigError(
            f"{path}: line {err.line}: key {err.key!r} appears twice in the same mapping (first on "
            f"line {err.first_line}); YAML would silently keep only the last one: merge or rename "
            f"them"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the configuration file: {err}") from None
    return parse_config(raw, path, check_files=check_files)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with the same key twice (line numbers are 1-based)."""

    def __init__(self, key, line: int, first_line: int):
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"line {line}: duplicate key {key!r} (first on line {first_line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth (``<<`` merges may
    still be overridden, as YAML intends)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark.line + 1, seen[key])
                    seen[key] = key_node.start_mark.line + 1
                except TypeError:  # unhashable key: SafeLoader reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
