"""Plots of a run: loss and eval loss, learning rate and throughput over steps."""

from __future__ import annotations

import io
from pathlib import Path

from finetune.atomic import read_jsonl, write_bytes


def _style(points: list[tuple[float, float]]) -> str:
    """A line, with markers where it has a single point: a one-point line draws nothing."""
    return "o-" if len(points) < 2 else "-"


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Write curves.png from metrics.jsonl (three panels sharing the step axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(metrics_path)
    if not records:
        return
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if train:
        axes[0].plot(*zip(*train), _style(train), label="train loss")
    if evals:
        axes[0].plot(*zip(*evals), "o-", label="eval loss")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    lrs = [(r["step"], r["learning_rate"]) for r in records if r.get("learning_rate") is not None]
    if lrs:
        axes[1].plot(*zip(*lrs), _style(lrs))
    axes[1].set_ylabel("learning rate")
    speed = [(r["step"], r["tokens_per_s"]) for r in records if r.get("tokens_per_s")]
    if speed:
        axes[2].plot(*zip(*speed), _style(speed))
    axes[2].set_ylabel("tokens/s")
    axes[2].set_xlabel("step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes(out_path, buffer.getvalue())
