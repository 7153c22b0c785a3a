"""The per-domain transfer report written with every CDTM artifact."""

from __future__ import annotations

import json

import pytest

from cdtm.lake import Lake
from cdtm.train.job import train_model
from tests.conftest import tiny_config as tiny


@pytest.fixture(scope="module")
def trained(synthetic_lake):  # noqa: ANN001, ANN201
    cfg = tiny(synthetic_lake[0], "train.model_version=syn-report", "train.plots=false")
    return cfg, train_model(cfg)


def test_report_covers_each_domain_and_its_transferable_fields(trained) -> None:  # noqa: ANN001
    cfg, result = trained
    art = result.artifact
    report = json.loads((art / "transfer_report.json").read_text())
    manifest = json.loads((art / "manifest.json").read_text())
    for name in ("transfer_report.json", "transfer_report.md", "transfer_heatmap.png"):
        assert name in manifest  # sealed with the weights
    spec = json.loads((art / "feature_spec.json").read_text())
    lake = Lake(cfg.lake.root)
    assert sorted(report["domains"]) == sorted(spec["domains"])
    for d_index, domain in enumerate(spec["domains"]):
        entry = report["domains"][domain]
        # The same model on the same rows as metrics.json's validation AUC.
        assert entry["valid_auc"] == pytest.approx(result.metrics[f"valid.auc.{domain}"], abs=1e-9)
        assert entry["auc_change_without_gse"] == pytest.approx(
            entry["valid_auc_without_gse"] - entry["valid_auc"], abs=1e-4
        )
        expected = {
            f["name"] for f in spec["fields"] if f["transferable"] and domain in f["domains"]
        }
        assert set(entry["fields"]) == expected
        for field, cell in entry["fields"].items():
            column = next(f["column"] for f in spec["fields"] if f["name"] == field)
            rows = lake.query(
                f"SELECT COUNT(*) AS n FROM features WHERE split = 'valid' AND domain = {d_index} "
                f"AND {column} > 0",
                ["features"],
            ).to_pylist()[0]["n"]
            assert cell["rows"] == rows, (domain, field)
            assert 0 < cell["attention_dse"] < 1 and cell["attention_gse"] == pytest.approx(
                1 - cell["attention_dse"], abs=1e-3
            )
            assert cell["distance"] > 0
    # Switching GSE off changes what the model predicts.
    assert any(e["auc_change_without_gse"] != 0 for e in report["domains"].values())
    assert "| d3 |" in (art / "transfer_report.md").read_text()


def test_baselines_and_dse_only_cdtm_write_no_report(synthetic_lake) -> None:
    for overrides in (["model.name=shared_bottom"], ["model.cdtm.gse=false"]):
        version = "syn-" + overrides[0].replace("=", "-").replace(".", "-")
        cfg = tiny(
            synthetic_lake[0],
            *overrides,
            f"train.model_version={version}",
            "train.plots=false",
            "train.max_epochs=1",
        )
        assert not (train_model(cfg).artifact / "transfer_report.json").exists()
