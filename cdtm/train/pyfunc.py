"""The trained model as an MLflow pyfunc model: what a registry stores and any MLflow client
scores (``mlflow.pyfunc.load_model(uri).predict(df)``).

The pyfunc carries the whole artifact folder; loading it checks the manifest and reads the
weights with ``weights_only=True`` (``load_artifact``), as scoring does. Input: one row per
event with ``domain`` (int index) and the feature columns of the artifact's spec
(``f_<field>`` indices, ``dense_<name>`` floats); output: the click probability.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

ARTIFACT_KEY = "cdtm_artifact"


class CdtmPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    def load_context(self, context: Any) -> None:
        from cdtm.train.artifacts import load_artifact

        self.model, self.spec, _ = load_artifact(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        import torch

        from cdtm.scoring.executor import batch_from_pandas

        del context, params
        with torch.no_grad():
            logits = self.model(batch_from_pandas(model_input, self.spec))
        return torch.sigmoid(logits).numpy().astype(np.float64)


def input_example(spec: Any, rows: int = 2) -> pd.DataFrame:
    """A valid input: every domain in turn, out-of-vocabulary indices, mid-range dense values."""
    data: dict[str, Any] = {"domain": np.arange(rows, dtype=np.int64) % len(spec.domains)}
    for f in spec.fields:
        data[f.column] = np.ones(rows, dtype=np.int64)
    for d in spec.dense:
        data[d.column] = np.full(rows, 0.5, dtype=np.float32)
    return pd.DataFrame(data)
