"""What runs report: a training run's metrics.csv (one row per epoch) and curves.png (one panel per group), and a
calibration's risk-coverage table and plot."""
from pathlib import Path

from utils.files import atomic_write


def write_history(history, path, columns):
    """One CSV row per epoch, in `columns` order."""
    import pandas as pd

    table = pd.DataFrame(history, columns=list(columns))
    atomic_write(Path(path), lambda p: table.to_csv(p, index=False))


def plot_history(history, path, panels):
    """panels: [(title, [column, ...]), ...], one plot each against the epoch (columns missing are skipped)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in (k for k in keys if k in history[0]):
            ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def save_figure(fig, path):
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_risk_coverage(rows, path, chosen=None, baselines=None):
    """Error among the items decided automatically against the share decided (coverage), one point per row of
    utils.calibration.risk_coverage; `chosen` (a row) is the calibrated point, `baselines` its reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([r["coverage"] for r in rows], [r["error"] for r in rows], marker="o", label="verdict (pass/fail/review)")
    if chosen:
        ax.scatter([chosen["coverage"]], [chosen["error"]], s=120, color="red", zorder=3, label="calibrated")
    for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle="--", color="grey" if "majority" in name else "orange",
                   label=name.replace("_", " "))
    ax.set_xlabel("coverage (share decided without a human)")
    ax.set_ylabel("error among the decided")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
