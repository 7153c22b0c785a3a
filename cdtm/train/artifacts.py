"""Versioned model artifacts: ``<artifacts.root>/<model_version>/``.

Files: ``weights.pt`` (state_dict, loaded with weights_only=True), ``model.json`` (model
config), ``feature_spec.json``, ``data.json`` (lake root and table versions used),
``metrics.json`` (flat keys ``test.auc.pooled``, ``valid.logloss.<domain>``, ...),
``history.json``, plots, and ``manifest.json`` with the SHA-256 of every other file, checked
on load so a tampered or truncated artifact is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cdtm.config import ModelConf, build, to_dict
from cdtm.model import CTRModel, build_model
from cdtm.spec import FeatureSpec

MANIFEST = "manifest.json"
REQUIRED = ("weights.pt", "model.json", "feature_spec.json", "data.json")
# The (field, value, index) rows the model was trained with: scoring checks them against the
# lake's vocabulary by value (cdtm.scoring.check_vocab).
VOCAB_FILE = "vocab.parquet"


class ArtifactError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_artifact(
    out: Path,
    *,
    model: CTRModel,
    model_conf: ModelConf,
    spec: FeatureSpec,
    data: dict[str, Any],
    metrics: dict[str, float | None],
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    vocab: pa.Table | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        pq.write_table(vocab, out / VOCAB_FILE)
    torch.save(model.state_dict(), out / "weights.pt")
    write_json(out / "model.json", to_dict(model_conf))
    (out / "feature_spec.json").write_text(spec.to_json() + "\n")
    write_json(out / "data.json", data)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", history)
    if extra:
        write_json(out / "run.json", extra)
    seal(out)
    return out


def seal(out: Path) -> None:
    """(Re)write the manifest over every file in the folder but itself."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    write_json(out / MANIFEST, {str(p.relative_to(out)): _sha256(p) for p in files})


def verify(out: Path) -> None:
    path = out / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{out}: no {MANIFEST}; not a complete artifact")
    manifest = json.loads(path.read_text())
    unlisted = sorted(set(REQUIRED) - set(manifest))
    if unlisted:
        raise ArtifactError(f"{out}: {MANIFEST} does not cover {unlisted}; refusing to load")
    for name, digest in manifest.items():
        f = out / name
        if not f.is_file():
            raise ArtifactError(f"{out}: {name} listed in the manifest is missing")
        if _sha256(f) != digest:
            raise ArtifactError(
                f"{out}: {name} does not match its SHA-256 in the manifest (tampered or truncated)"
            )


def load_artifact(out: Path) -> tuple[CTRModel, FeatureSpec, dict[str, Any]]:
    """Model (eval mode, CPU), its feature spec and data.json, after checking the manifest."""
    out = Path(out)
    verify(out)
    spec = FeatureSpec.from_dict(json.loads((out / "feature_spec.json").read_text()))
    conf = build(ModelConf, json.loads((out / "model.json").read_text()), prefix="model")
    model = build_model(spec, conf)
    model.load_state_dict(torch.load(out / "weights.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, spec, json.loads((out / "data.json").read_text())


def latest_artifact(root: Path) -> Path:
    done = [p.parent for p in Path(root).glob(f"*/{MANIFEST}")]
    if not done:
        raise ArtifactError(f"no model artifact under {root}")
    return max(done, key=lambda p: (p / MANIFEST).stat().st_mtime)
