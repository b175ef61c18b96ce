r"""Labels per trait from expression percentiles (SPEC 3.2).

For a trait with cohort values :math:`x_1..x_n` (NA dropped), the percentile of patient *i* is

.. math::  q_i = 100 \, \frac{r_i - 1}{n - 1}

with :math:`r_i` the average rank (ties share a rank).  ``q > high`` is labelled 1, ``q < low`` 0;
those are the only patients used for train, validation and test.  Patients with
``low <= q <= high`` are out of distribution (``ood_all``), ``ood_near`` are the ones within
``width`` of the cut-offs; their ground truth is above (1) or below (0) the median (``q > 50``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def percentiles(values: pd.Series) -> pd.Series:
    """Percentile in [0, 100] of each value within the series (NA stays NA).

    Examples
    --------
    >>> percentiles(pd.Series([3.0, 1.0, 2.0])).tolist()
    [100.0, 0.0, 50.0]
    """
    ok = values.dropna()
    if len(ok) < 2:
        return pd.Series(np.where(values.notna(), 50.0, np.nan), index=values.index)
    ranks = ok.rank(method="average")
    return (100.0 * (ranks - 1) / (len(ok) - 1)).reindex(values.index)


def assign_labels(values: pd.Series, low: float = 20.0, high: float = 80.0, near_width: float = 10.0) -> pd.DataFrame:
    """Rows ``patient_id, percentile, label, subset`` for one trait.

    ``values`` is indexed by patient id.  An ``ood_near`` patient appears twice: as
    ``ood_near`` and as ``ood_all`` (SPEC 5).  Patients with NA expression get no row.

    Examples
    --------
    >>> v = pd.Series(range(11), index=[f"p{i}" for i in range(11)], dtype=float)
    >>> assign_labels(v).groupby("subset").size().to_dict()
    {'labeled': 4, 'ood_all': 7, 'ood_near': 2}
    """
    pct = percentiles(values).dropna()
    rows = []
    for pid, q in pct.items():
        if q > high:
            rows.append((pid, q, 1, "labeled"))
        elif q < low:
            rows.append((pid, q, 0, "labeled"))
        else:
            median_label = int(q > 50.0)
            rows.append((pid, q, median_label, "ood_all"))
            if q < low + near_width or q > high - near_width:
                rows.append((pid, q, median_label, "ood_near"))
    return pd.DataFrame(rows, columns=["patient_id", "percentile", "label", "subset"])


def label_table(expression: pd.DataFrame, cohort: str, low: float, high: float, near_width: float) -> pd.DataFrame:
    """``labels`` table rows for every trait of ``expression`` (``trait, patient_id, value``)."""
    frames = []
    for trait, grp in expression.groupby("trait", sort=False):
        vals = grp.set_index("patient_id")["value"]
        inf = vals[np.isinf(vals.astype(float))]
        if not inf.empty:  # the readers refuse them; a percentile of infinity would be a silent 'high'
            raise ValueError(
                f"{cohort}/{trait}: infinite expression for {sorted(inf.index)[:5]}; expected finite values or NA"
            )
        lab = assign_labels(vals, low, high, near_width)
        lab.insert(0, "trait", trait)
        lab["expression"] = lab["patient_id"].map(vals)
        frames.append(lab)
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["trait", "patient_id", "percentile", "label", "subset", "expression"])
    )
    out.insert(0, "cohort", cohort)
    return out


def label_counts(labels: pd.DataFrame) -> pd.DataFrame:
    """Patients per trait, subset and label as columns ``labeled high``, ``ood_all <=median``, ...."""
    counts = labels.pivot_table(
        index="trait", columns=["subset", "label"], values="patient_id", aggfunc="count", fill_value=0
    )
    counts.columns = [
        f"{s} {'high' if hi else 'low'}" if s == "labeled" else f"{s} {'>' if hi else '<='}median"
        for s, hi in counts.columns
    ]
    return counts.reset_index()
