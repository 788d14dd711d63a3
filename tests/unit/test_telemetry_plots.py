"""curves.png from metrics.jsonl: every series is visible, even one with a single logged step."""

from __future__ import annotations

import json

from finetune.plots import plot_curves

# matplotlib's first colour (C0), which each panel's first series is drawn in.
C0 = (0x1F, 0x77, 0xB4)


def test_a_series_with_one_point_is_drawn(tmp_path):
    import matplotlib.image

    metrics = tmp_path / "metrics.jsonl"
    record = {"step": 1, "loss": 3.5, "learning_rate": 1e-4, "tokens_per_s": 120.0}
    metrics.write_text(json.dumps(record) + "\n")
    plot_curves(metrics, tmp_path / "curves.png")

    pixels = (matplotlib.image.imread(tmp_path / "curves.png")[..., :3] * 255).round()
    # The learning-rate and tokens/s panels (the lower two thirds) have no legend: any C0 there is a point.
    lower = pixels[pixels.shape[0] // 3:]
    near = (abs(lower - C0) <= 12).all(axis=-1)
    assert near.sum() > 20, "the one-point learning-rate and tokens/s series are invisible"
