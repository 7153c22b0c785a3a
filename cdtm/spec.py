"""The feature spec: what the ETL produced, as the model needs to know it.

Written by the ETL as the ``feature_spec`` Delta table (one row per domain, field and dense
feature) next to the ``vocab`` table it describes, and copied into each model artifact.
Nothing here imports Spark or torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SPEC_COLUMNS = "kind string, name string, position int, column string, domains array<string>, transferable boolean, size long, min double, max double"


# Index 1 of every vocabulary: a value out of the vocabulary (feature_etl/vocab.py). A model
# trained on an older, shorter vocabulary reads the values appended since as this.
OOV_INDEX = 1


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    column: str  # int64 index column in the features table
    domains: tuple[str, ...]  # domains that have this field
    transferable: bool  # shared across domains (has a GSE table)
    vocab_size: int  # embedding rows, PAD and OOV included


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    name: str
    column: str  # float32 column in the features table, scaled to [0, 1]
    domains: tuple[str, ...]
    min: float
    max: float


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    dataset: str
    domains: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    dense: tuple[DenseSpec, ...] = ()

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(
            f"no field {name!r} in the feature spec (fields: {[f.name for f in self.fields]})"
        )

    def fields_of(self, domain: str) -> list[FieldSpec]:
        return [f for f in self.fields if domain in f.domains]

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.fields] + [d.column for d in self.dense]

    # ---- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> FeatureSpec:
        return FeatureSpec(
            dataset=d["dataset"],
            domains=tuple(d["domains"]),
            fields=tuple(FieldSpec(**{**f, "domains": tuple(f["domains"])}) for f in d["fields"]),
            dense=tuple(
                DenseSpec(**{**x, "domains": tuple(x["domains"])}) for x in d.get("dense", ())
            ),
        )

    def to_rows(self) -> list[tuple[Any, ...]]:
        """Rows of the ``feature_spec`` table (SPEC_COLUMNS)."""
        rows: list[tuple[Any, ...]] = [
            ("dataset", self.dataset, 0, None, None, None, None, None, None)
        ]
        rows += [
            ("domain", n, i, None, None, None, None, None, None) for i, n in enumerate(self.domains)
        ]
        rows += [
            (
                "field",
                f.name,
                i,
                f.column,
                list(f.domains),
                f.transferable,
                f.vocab_size,
                None,
                None,
            )
            for i, f in enumerate(self.fields)
        ]
        rows += [
            ("dense", d.name, i, d.column, list(d.domains), False, None, float(d.min), float(d.max))
            for i, d in enumerate(self.dense)
        ]
        return rows

    @staticmethod
    def from_rows(rows: Iterable[Mapping[str, Any]]) -> FeatureSpec:
        by_kind: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            by_kind.setdefault(r["kind"], []).append(r)
        if "dataset" not in by_kind or "domain" not in by_kind:
            raise ValueError("feature_spec table has no dataset/domain rows: was the ETL run?")

        def ordered(kind: str) -> list[Mapping[str, Any]]:
            return sorted(by_kind.get(kind, []), key=lambda r: r["position"])

        return FeatureSpec(
            dataset=by_kind["dataset"][0]["name"],
            domains=tuple(r["name"] for r in ordered("domain")),
            fields=tuple(
                FieldSpec(
                    r["name"],
                    r["column"],
                    tuple(r["domains"]),
                    bool(r["transferable"]),
                    int(r["size"]),
                )
                for r in ordered("field")
            ),
            dense=tuple(
                DenseSpec(
                    r["name"], r["column"], tuple(r["domains"]), float(r["min"]), float(r["max"])
                )
                for r in ordered("dense")
            ),
        )


def read_feature_spec(spec_table_root: str, version: int | None = None) -> FeatureSpec:
    """The spec from the ``feature_spec`` Delta table (delta-rs, no Spark needed)."""
    from cdtm.lake import query

    table = query(
        "SELECT * FROM s", {"s": spec_table_root}, {"s": version} if version is not None else None
    )
    return FeatureSpec.from_rows(table.to_pylist())


# The ETL stores, in the commit that publishes a day of ``features``, the versions of the
# ``vocab`` and ``feature_spec`` tables that day was indexed with, and of its ``rejects``.
LINK_KEYS = {
    "vocab": "cdtm.vocab_version",
    "feature_spec": "cdtm.feature_spec_version",
    "rejects": "cdtm.rejects_version",
}


# Also in the features commit: the day it published, and the vocabulary generation its rows
# were indexed with (one generation: indices that never moved; see feature_etl/vocab.py).
DAY_KEY = "cdtm.ds"
GENERATION_KEY = "cdtm.vocab_generation"
# A commit that rewrote every day (etl.vocab=rebuild) lists them: all now of its generation.
DAYS_KEY = "cdtm.days"


def day_generations(lake_root: str, features_version: int) -> dict[str, str]:
    """``{ds: vocabulary generation}`` of the days in ``features_version``, from the commits
    that published them (days published before generations were recorded are absent)."""
    from cdtm.lake import Lake, history

    out: dict[str, str] = {}
    entries = sorted(history(Lake(lake_root).path("features")), key=lambda e: int(e["version"]))
    for entry in entries:
        if int(entry["version"]) > features_version:
            break
        meta = entry.get("userMetadata")
        if not (isinstance(meta, str) and meta.startswith("{")):
            continue
        info = json.loads(meta)
        if DAYS_KEY in info and GENERATION_KEY in info:
            out = {str(d): str(info[GENERATION_KEY]) for d in info[DAYS_KEY]}
        elif DAY_KEY in info and GENERATION_KEY in info:
            out[str(info[DAY_KEY])] = str(info[GENERATION_KEY])
    return out


def published_versions(lake_root: str, features_version: int) -> dict[str, int]:
    """``{"features", "vocab", "feature_spec", "rejects"}`` versions that belong together.

    The features commit is the ETL's last: a job killed after committing a new vocabulary but
    before publishing its day leaves readers on the older, matching pair. Features written
    without the link (older tables) pair with the latest vocab and spec.
    """
    from cdtm.lake import Lake, commit_info

    lake = Lake(lake_root)
    info = commit_info(lake.path("features"), features_version)
    out = {"features": features_version}
    for table, key in LINK_KEYS.items():
        value = info.get(key)
        if value is not None:
            out[table] = int(value)
        elif lake.exists(table):
            out[table] = lake.version(table)
    return out


def moved_values(model: pd.DataFrame, lake: pd.DataFrame) -> pd.DataFrame:
    """The (field, value, index) rows of a model's vocabulary that the lake's vocabulary lacks
    or holds at another index (``lake_index``: NaN where it lacks them), in the model's order.
    Empty: the model's vocabulary is a prefix of the lake's, by value."""
    joined = model[["field", "value", "index"]].merge(
        lake[["field", "value", "index"]].rename(columns={"index": "lake_index"}),
        on=["field", "value"],
        how="left",
    )
    return joined[joined["lake_index"].isna() | (joined["lake_index"] != joined["index"])]
