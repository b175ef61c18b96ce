"""Expression, labels, splits and clinical data per cohort (SPEC 2, 3.1-3.2)."""

import dagster as dg
import pandas as pd

from ..config import PathomchConfig
from ..expression import read_clinical, read_traits
from ..labels import label_table
from ..partitions import ALL, cohorts
from ..reporting import md_table
from ..resources import PathomchResource
from ..slides import primary_slides, usable_slides
from ..splits import assign_splits, moved_patients, split_counts
from .ingest import slide_tiles


def training_slides(store, cohort: str) -> pd.DataFrame:
    """Every usable (status ok, diagnostic) slide of ``cohort``: labels, training, scores and AUCs (SPEC 2)."""
    return usable_slides(store.read("slides", "cohort = ?", [cohort]))


def survival_slides(store, cohort: str) -> pd.DataFrame:
    """One usable slide per patient of ``cohort``, the DX1 slide (else the lowest DX): survival only (SPEC 3.10)."""
    return primary_slides(store.read("slides", "cohort = ?", [cohort]))


def build(cfg: PathomchConfig):
    part = cohorts(cfg)

    @dg.asset(
        partitions_def=part,
        group_name="molecular",
        kinds={"pandas", "parquet"},
        deps=[dg.AssetDep(slide_tiles, partition_mapping=ALL)],
        description="Per-patient expression of each configured trait, streamed from the PanCanAtlas "
        "mRNA TSV and miRNA CSV: primary-tumour aliquots only, several aliquots averaged, "
        "patients with a usable slide only. Writes the `expression` table.",
    )
    def expression(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        c = cfg.cohorts[cohort]
        patients = set(training_slides(store, cohort)["patient_id"])
        if not patients:
            raise dg.Failure(f"cohort {cohort}: no slide with status 'ok' in `slides`; materialize slide_tiles first")
        df = read_traits(c.traits, c.mrna, c.mirna, patients)
        df.insert(0, "cohort", cohort)
        store.write("expression", cohort, df)
        summary = (
            df.groupby("trait")
            .agg(
                patients=("value", "size"), missing=("value", lambda v: int(v.isna().sum())), median=("value", "median")
            )
            .reset_index()
        )
        no_expr = sorted(patients - set(df["patient_id"]))
        if no_expr:
            context.log.warning(
                f"{len(no_expr)} patients with slides have no primary-tumour expression: {no_expr[:10]}"
            )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(df),
                "patients_with_slides": len(patients),
                "patients_without_expression": len(no_expr),
                "traits": md_table(summary),
            }
        )

    @dg.asset(
        partitions_def=part,
        group_name="molecular",
        kinds={"pandas", "parquet"},
        deps=[expression, "splits"],
        description="Labels per trait (SPEC 3.2): above the high percentile = 1, below the low = 0; "
        "the middle is out of distribution (ood_all, ood_near) with above/below-median truth. "
        "Writes the `labels` table.",
    )
    def labels(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        expr = store.read("expression", "cohort = ?", [cohort]).dropna(subset=["value"])
        lab = label_table(
            expr, cohort, cfg.labels.low_percentile, cfg.labels.high_percentile, cfg.labels.ood_near_width
        )
        store.write("labels", cohort, lab)
        slides = training_slides(store, cohort)
        per_split = split_counts(store.read("splits", "cohort = ?", [cohort]), slides, lab)
        store.write("split_counts", f"{cohort}/labeled", per_split.assign(cohort=cohort))
        counts = lab.pivot_table(
            index="trait", columns=["subset", "label"], values="patient_id", aggfunc="count", fill_value=0
        )
        counts.columns = [
            f"{s} {'high' if hi else 'low'}" if s == "labeled" else f"{s} {'>' if hi else '<='}median"
            for s, hi in counts.columns
        ]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(lab),
                "label_counts": md_table(counts.reset_index()),
                "labelled_per_split": md_table(labelled_wide(per_split[per_split["round"] == 0])),
                "slides": len(slides),
                "patients_with_slides": int(slides["patient_id"].nunique()),
            }
        )

    @dg.asset(
        partitions_def=part,
        group_name="molecular",
        kinds={"pandas", "parquet"},
        deps=[dg.AssetDep(slide_tiles, partition_mapping=ALL)],
        description="Subject-level splits (SPEC 3.1): a held-out test set shared by every trait and "
        "round, and per round a train/validation split, each a hash of (seed, patient): frozen, so "
        "new slides never move an existing patient. Writes the `splits` table.",
    )
    def splits(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        slides = training_slides(store, cohort)
        patients = slides["patient_id"]
        s = cfg.splits
        new = assign_splits(patients, cfg.seed, s.test_fraction, s.val_fraction, s.rounds)
        previous = store.read("splits", "cohort = ?", [cohort])
        moved = moved_patients(previous, new)
        if not moved.empty:
            raise dg.Failure(
                f"cohort {cohort}: the configured seed/fractions would move {moved['patient_id'].nunique()} patients "
                f"between splits, but splits are frozen. Restore the settings, or delete "
                f"{store.tables_dir / 'splits'} on purpose to re-split (trained models then no longer match)."
            )
        new.insert(0, "cohort", cohort)
        store.write("splits", cohort, new)
        counts = split_counts(new, slides)
        store.write("split_counts", f"{cohort}/all", counts.assign(cohort=cohort))
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(new),
                "patients": int(patients.nunique()),
                "slides": len(slides),
                "split_counts": md_table(counts_wide(counts)),
            }
        )

    @dg.asset(
        partitions_def=part,
        group_name="molecular",
        kinds={"pandas", "parquet"},
        description="Overall survival, ER status and subtype per patient from the cBioPortal clinical "
        "patient table; rows with missing or negative times are left out and listed.",
    )
    def clinical(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        c = cfg.cohorts[cohort]
        if c.clinical is None:
            store.write("clinical", cohort, pd.DataFrame(columns=["cohort", "patient_id", "os_months", "os_event"]))
            return dg.MaterializeResult(metadata={"note": "no clinical table configured"})
        tab = read_clinical(c.clinical, c.er_status_column, c.subtype_column)
        for p in tab.problems:
            context.log.warning(p)
        df = tab.patients.assign(cohort=cohort)
        store.write("clinical", cohort, df)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(df),
                "events": int(df["os_event"].sum()),
                "rows_left_out": len(tab.problems),
            }
        )

    return [expression, labels, splits, clinical]


def counts_wide(counts: pd.DataFrame) -> pd.DataFrame:
    """``split_counts`` rows as a table per round: ``<split> patients`` and ``<split> slides``."""
    wide = counts.pivot_table(
        index="round", columns="split", values=["n_patients", "n_slides"], aggfunc="sum", fill_value=0
    )
    wide.columns = [f"{split} {'patients' if v == 'n_patients' else 'slides'}" for v, split in wide.columns]
    return wide[sorted(wide.columns, key=lambda c: (["train", "val", "test"].index(c.split()[0]), c))].reset_index()


def labelled_wide(counts: pd.DataFrame) -> pd.DataFrame:
    """Labelled patients/slides per trait, split and class (one round) as ``low``/``high`` columns."""
    if counts.empty:
        return pd.DataFrame(columns=["trait", "split"])
    c = counts.assign(cls=counts["label"].map({0: "low", 1: "high"}))
    wide = c.pivot_table(
        index=["trait", "split"], columns="cls", values=["n_patients", "n_slides"], aggfunc="sum", fill_value=0
    )
    wide.columns = [f"{cls} {'patients' if v == 'n_patients' else 'slides'}" for v, cls in wide.columns]
    return wide.reset_index()
