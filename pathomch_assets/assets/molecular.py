"""Expression, labels, splits and clinical data per cohort (SPEC 2, 3.1-3.2)."""

import dagster as dg
import pandas as pd

from ..config import PathomchConfig
from ..expression import read_clinical, read_traits
from ..ingest import training_slides
from ..labels import label_counts, label_table
from ..partitions import ALL, cohorts
from ..reporting import md_table
from ..resources import PathomchResource
from ..splits import SiteSplit, cohort_splits


def build(cfg: PathomchConfig, cohort: str, slide_tiles):
    """``cohort``'s expression, labels, splits and clinical assets (keys ``<cohort>/<name>``)."""
    part = cohorts(cohort)

    @dg.asset(
        partitions_def=part,
        key_prefix=[cohort],
        group_name=cohort,
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
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet"},
        deps=[expression],
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
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(lab),
                "label_counts": md_table(label_counts(lab)),
                "slides": len(slides),
                "patients_with_slides": int(slides["patient_id"].nunique()),
            }
        )

    @dg.asset(
        partitions_def=part,
        key_prefix=[cohort],
        group_name=cohort,
        kinds={"pandas", "parquet", "highs"},
        deps=[dg.AssetDep(slide_tiles, partition_mapping=ALL), labels],
        description="Subject-level splits (SPEC 3.1): a held-out test set shared by every trait and round, and "
        "per round a train/validation split; frozen, so new slides never move an existing patient. "
        "splits.method patient: a hash of (seed, patient), the paper's; site_preserved: each tissue source "
        "site whole in one split, each trait's class balance solved exactly (MILP, HiGHS). Writes the "
        "`splits` and `split_counts` tables.",
    )
    def splits(context: dg.AssetExecutionContext, pathomch: PathomchResource) -> dg.MaterializeResult:
        cfg, store = pathomch.get_config(), pathomch.get_store()
        cohort = context.partition_key
        slides = training_slides(store, cohort)
        try:
            res = cohort_splits(
                cohort,
                slides,
                store.read("labels", "cohort = ?", [cohort]),
                store.read("splits", "cohort = ?", [cohort]),
                cfg.splits,
                cfg.seed,
                cfg.cohorts[cohort].site_file,
            )
        except ValueError as err:
            raise dg.Failure(str(err)) from None
        store.write("splits", cohort, res.splits)
        for subset, rows in res.counts.groupby("subset"):
            store.write("split_counts", f"{cohort}/{subset}", rows)
        counts = res.counts[res.counts["subset"] == "all"]
        labelled = res.counts[(res.counts["subset"] == "labeled") & (res.counts["round"] == 0)]
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(res.splits),
                "patients": int(slides["patient_id"].nunique()),
                "slides": len(slides),
                "sites": int(res.splits["site"].nunique()),
                "method": res.method,
                **(solver_metadata(res.solver) if res.solver else {}),
                "split_counts": md_table(counts_wide(counts)),
                "labelled_per_split": md_table(labelled_wide(labelled)),
            }
        )

    @dg.asset(
        partitions_def=part,
        key_prefix=[cohort],
        group_name=cohort,
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


def solver_metadata(solver: SiteSplit) -> dict:
    """A site-preserved split's solver report: status, largest gap, sites kept from earlier splits, steps."""
    return {
        "solver_status": solver.status,
        "solver_gap": solver.gap,
        "sites_kept_from_previous_splits": solver.fixed_sites,
        "solver_steps": md_table(solver.steps),
    }


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
