"""What a training run reports each epoch: metrics.csv (one row per epoch) and curves.png (one panel per group)."""
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
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)
