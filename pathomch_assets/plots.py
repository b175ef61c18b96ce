"""Figures: training curves, score boxplots (paper Figure 2).  Each function takes ``ax=None``
(or makes its own figure) and returns the figure; callers close it after saving."""

from __future__ import annotations

import sys

import pandas as pd


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are drawn in run workers and
    saved, never shown), imported on first use: about 0.9 s less start-up for every step process, code
    server and command that draws nothing."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if plt.get_backend().lower() != "agg":  # pyplot imported elsewhere on an interactive backend
        plt.switch_backend("Agg")
    return plt


def plot_training_curve(history: pd.DataFrame):
    """Loss and validation slide AUC per evaluation."""
    fig, ax = pyplot().subplots(figsize=(5, 2.8))
    if not history.empty:
        ax.plot(history["eval"], history["loss"], color="tab:grey", label="training loss")
        ax2 = ax.twinx()
        ax2.plot(history["eval"], history["val_slide_auc"], color="tab:blue", marker="o", ms=3, label="val slide AUC")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("validation slide AUC")
        best = history["val_slide_auc"].idxmax()
        ax2.axvline(history.loc[best, "eval"], color="tab:blue", ls=":", lw=1)
    ax.set_xlabel("evaluation (1/N epoch)")
    ax.set_ylabel("loss")
    fig.tight_layout()
    return fig


def plot_score_boxes(scores: pd.DataFrame, labels: pd.DataFrame, splits: pd.DataFrame, traits: list[str]):
    """Ensemble slide scores by ground truth, per trait, for test, OOD-near and OOD-all (Figure 2)."""
    test = set(splits.loc[splits["split"] == "test", "patient_id"])
    sets = [
        ("test", lambda lab: (lab["subset"] == "labeled") & lab["patient_id"].isin(test)),
        ("OOD-near", lambda lab: lab["subset"] == "ood_near"),
        ("OOD-all", lambda lab: lab["subset"] == "ood_all"),
    ]
    fig, axes = pyplot().subplots(1, len(traits), figsize=(3.2 * len(traits), 3), squeeze=False, sharey=True)
    for ax, trait in zip(axes[0], traits):
        lab = labels[labels["trait"] == trait]
        sc = scores[scores["trait"] == trait][["patient_id", "score"]]
        data, ticks = [], []
        for name, sel in sets:
            m = lab[sel(lab)].merge(sc, on="patient_id")
            for cls, word in ((0, "low"), (1, "high")):
                data.append(m.loc[m["label"] == cls, "score"].to_numpy())
                ticks.append(f"{name}\n{word}")
        box = ax.boxplot(data, patch_artist=True, widths=0.6)
        for i, patch in enumerate(box["boxes"]):
            patch.set_facecolor("#9ecae1" if i % 2 == 0 else "#fc9272")
        ax.set_xticks(range(1, len(ticks) + 1), ticks, fontsize=7)
        ax.set_title(trait, fontsize=10)
    axes[0][0].set_ylabel("ensemble slide score (% positive tiles)")
    fig.tight_layout()
    return fig
