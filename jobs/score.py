"""Score one day with a trained model; write the scores Delta table.

    python jobs/score.py --config conf/local.yaml --set run.ds=2024-01-01 [--set scoring.model=latest]

With ``scoring.candidates`` set, the day's unlabelled candidate rows are scored (bad ones
quarantined in candidate_rejects); otherwise the labelled rows of ``scoring.table`` (features),
with AUC and calibration per domain in the report.

Prints the scoring report (JSON) on stdout; exits 1 when scoring is refused (nothing written).
"""

from __future__ import annotations

import json
import sys

from cdtm.cli import load, parser, run_job, setup_logging
from cdtm.scoring import ScoringError, score_day
from cdtm.spark import build_session
from cdtm.train.artifacts import ArtifactError


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup_logging()
    cfg = load(args)
    spark = build_session(cfg.spark)
    try:
        if cfg.scoring.candidates is not None:
            from feature_etl.candidates import score_candidates

            report = score_candidates(spark, cfg)
        else:
            report = score_day(spark, cfg)
    except (ScoringError, ArtifactError) as e:
        print(f"score failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def run() -> None:
    """The console script ``cdtm-score``."""
    run_job("score", main)


if __name__ == "__main__":
    run()
