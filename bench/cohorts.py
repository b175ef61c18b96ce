"""Small planted cohorts for the benchmarks and the tests: a seed whose labels balance, and the ungated overrides."""

from __future__ import annotations

from pathlib import Path

#: the small planted cohorts of the tests and benchmarks keep every trait in maps, HTI and survival (flagged when it
#: fails the validity gate): with 7-13 validation slides a round, the gate's interval can leave out a planted trait,
#: and these runs are about other things (the gate itself: test_validity.py); the shipped demo runs the gate as a
#: deployment does
UNGATED = {"maps": {"include_invalid": True}}


def balanced_seed(cohorts, splits: dict, seeds=range(1, 200)) -> int:
    """The first of ``seeds`` whose cohorts (``DemoCohort`` specs) split by ``splits`` pass the label-balance check.

    Small cohorts can leave a validation split without one class, which the check rightly
    blocks; this runs the real readers, labels, splits and check on the generated expression
    tables (no slides), so a small cohort of the tests or benchmarks is deterministic and valid.
    """
    import tempfile

    from pathomch_assets.checks import label_balance
    from pathomch_assets.demo_cohort import expression_tables, load_source_tiles, plan_cohort, write_mirna, write_mrna
    from pathomch_assets.expression import read_traits
    from pathomch_assets.labels import label_table
    from pathomch_assets.splits import assign_splits

    sources = sorted(load_source_tiles())
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            ok = True
            for spec in cohorts:
                patients, with_slides, _, shares, _, _ = plan_cohort(spec, seed, sources)
                mrna, mirna = expression_tables(spec, seed, patients, with_slides, shares)
                write_mrna(mrna, Path(tmp) / "m.tsv")
                write_mirna(mirna, Path(tmp) / "mi.csv")
                expr = read_traits(list(spec.traits), Path(tmp) / "m.tsv", Path(tmp) / "mi.csv", set(with_slides))
                labels = label_table(expr.dropna(subset=["value"]), spec.name, 20, 80, 10)
                sp = assign_splits(with_slides, seed, splits["test_fraction"], splits["val_fraction"], 5)
                ok = ok and label_balance(labels, sp.assign(cohort=spec.name)).passed
            if ok:
                return seed
    raise RuntimeError(f"no seed of {seeds} gives balanced labels for these cohorts: add patients or widen splits")
