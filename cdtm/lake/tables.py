"""What each table of the lake holds: its comment, its writer and its column comments.

They land in the Delta log when a table is created (the table's description and properties,
each field's ``comment`` metadata), so ``DESCRIBE TABLE EXTENDED cdtm.scores`` in any SQL
client says what a table is and which job writes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class TableDoc:
    comment: str
    writer: str
    columns: Mapping[str, str]  # a name, or a prefix ending in "_*"

    def column(self, name: str) -> str | None:
        if name in self.columns:
            return self.columns[name]
        for key, text in self.columns.items():
            if key.endswith("_*") and name.startswith(key[:-1]):
                return text.format(name=name[len(key) - 1 :])
        return None


_DS = "the day (YYYY-MM-DD) the row belongs to; the partition column"
DOCS: dict[str, TableDoc] = {
    "features": TableDoc(
        "Accepted events with indexed features, one day per partition (training and evaluation input)",
        "feature_etl (jobs/etl.py)",
        {
            "ds": _DS,
            "row_id": "hash of the raw row: stable across re-runs",
            "domain": "index of the row's domain in the feature spec",
            "label": "click (1) or not (0)",
            "split": "train, valid or test",
            "ts": "event time, unix seconds",
            "user_key": "the user's raw key",
            "item_key": "the item's raw key",
            "f_*": "vocabulary index of field {name} (0 absent, 1 out of vocabulary)",
            "dense_*": "dense feature {name}, scaled to [0, 1]",
        },
    ),
    "rejects": TableDoc(
        "Quarantined input rows with the reason each was rejected",
        "feature_etl (jobs/etl.py)",
        {
            "ds": _DS,
            "reason": "reject reason code (README: reject reason codes)",
            "field": "the field that broke the rule",
            "source_file": "the input file the row came from",
            "raw": "the row as it came",
        },
    ),
    "candidate_rejects": TableDoc(
        "Quarantined candidate rows (scoring.candidates) with the reason each was rejected",
        "feature_etl.candidates (jobs/score.py, jobs/pipeline.py)",
        {
            "ds": _DS,
            "reason": "reject reason code (README: reject reason codes; domain_not_in_model)",
            "field": "the field that broke the rule",
            "source_file": "the input the row came from",
            "raw": "the row as it came",
        },
    ),
    "vocab": TableDoc(
        "Vocabulary of every categorical field: value -> index",
        "feature_etl (jobs/etl.py)",
        {
            "field": "field name",
            "value": "raw value",
            "index": "index used in features.f_<field>",
            "count": "training rows with this value when it was indexed",
        },
    ),
    "feature_spec": TableDoc(
        "Domains, fields and dense features of the dataset, with vocabulary sizes",
        "feature_etl (jobs/etl.py)",
        {},
    ),
    "scores": TableDoc(
        "Predicted click probability of each scored row, one day per partition",
        "cdtm.scoring (jobs/score.py)",
        {
            "ds": _DS,
            "row_id": "features.row_id of the scored row",
            "domain": "domain name",
            "user_key": "the user's raw key",
            "item_key": "the item's raw key",
            "score": "predicted click probability in [0, 1]",
            "model_version": "the model artifact that scored the row",
            "scored_at": "when the scoring job ran (UTC)",
        },
    ),
}


def properties(name: str) -> dict[str, str]:
    """Table properties of a table the project creates. Deletion vectors stay off: the
    training reader takes a version's file list, which cannot see them."""
    props = {"delta.enableDeletionVectors": "false", "cdtm.table": name}
    doc = DOCS.get(name)
    if doc is not None:
        props["cdtm.writer"] = doc.writer
    return props
