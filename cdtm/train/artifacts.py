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


def _manifest(out: Path) -> dict[str, str]:
    """The manifest's {relative file name: SHA-256}; anything else is refused, naming the file."""
    path = out / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{out}: no {MANIFEST}; not a complete artifact")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not a JSON manifest ({e}); refusing to load") from None
    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()
    ):
        raise ArtifactError(f"{path}: not a {{file: sha256}} object; refusing to load")
    for name in manifest:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name:
            raise ArtifactError(
                f"{path}: {name!r} is not a plain name inside the artifact; refusing to load"
            )
    return manifest


def verify(out: Path) -> None:
    manifest = _manifest(out)
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
    """Model (eval mode, CPU), its feature spec and data.json, after checking the manifest.
    A file that passes the manifest but does not load is refused with its name."""
    out = Path(out)
    verify(out)
    name = "feature_spec.json"
    try:
        spec = FeatureSpec.from_dict(json.loads((out / name).read_text()))
        name = "model.json"
        conf = build(ModelConf, json.loads((out / name).read_text()), prefix="model")
        model = build_model(spec, conf)
        name = "weights.pt"
        weights = torch.load(out / name, map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
        name = "data.json"
        data = json.loads((out / name).read_text())
    except Exception as e:  # noqa: BLE001 - whatever the file holds, the answer is "refused"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(
            f"{out / name}: does not load ({type(e).__name__}: {first}); refusing the artifact"
        ) from e
    model.eval()
    return model, spec, data


def latest_artifact(root: Path) -> Path:
    done = [p.parent for p in Path(root).glob(f"*/{MANIFEST}")]
    if not done:
        raise ArtifactError(f"no model artifact under {root}")
    return max(done, key=lambda p: (p / MANIFEST).stat().st_mtime)


# The champion: the model version the nightly pipeline scores with, and the versions it
# replaced (newest last), so that a rollback knows where to go.
CHAMPION_FILE = "_champion.json"


def champion_history(root: Path) -> list[dict[str, Any]]:
    path = Path(root) / CHAMPION_FILE
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())["history"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: not a champion record ({e}); fix or remove it") from e
    return list(history)


def champion(root: Path) -> str | None:
    """The champion's model version (None before the first promotion)."""
    history = champion_history(root)
    return str(history[-1]["version"]) if history else None


def champion_artifact(root: Path) -> Path:
    version = champion(root)
    if version is None:
        raise ArtifactError(
            f"no champion under {root}: the nightly pipeline promotes its first model, or run "
            "`python jobs/maintain.py promote --model <version>`"
        )
    path = Path(root) / version
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"the champion {version} has no artifact at {path}")
    return path


def write_champion_history(root: Path, history: list[dict[str, Any]]) -> None:
    """Replace the record in one rename: a reader sees the old champion or the new one."""
    path = Path(root) / CHAMPION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"history": history}, indent=2) + "\n")
    tmp.replace(path)
