"""Flags shared by every job: ``--config FILE`` (repeatable, merged in order) and ``--set key=value``."""

from __future__ import annotations

import argparse
import logging
import sys

from cdtm.config import Config, ConfigError, load_config

DEFAULT_CONFIGS = ("conf/local.yaml",)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help=f"YAML config, repeatable, merged in order (default: {' '.join(DEFAULT_CONFIGS)})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one key, e.g. --set run.ds=2024-01-02 (value parsed as YAML)",
    )
    return p


def load(args: argparse.Namespace) -> Config:
    """The merged config, or exit 2 with the key and file named."""
    try:
        return load_config(args.config or DEFAULT_CONFIGS, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
