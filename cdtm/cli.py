"""Flags shared by every job: ``--config FILE`` (repeatable, merged in order) and ``--set key=value``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

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


def run_job(name: str, main: Callable[[], int]) -> NoReturn:
    """``sys.exit(main())``, where an error the job did not expect exits 1 with one line on
    stderr that says what failed and where its traceback went: a file under ``$CDTM_LOG_DIR``
    (default: the system's temporary folder), not a screen of Python and Java frames."""
    try:
        code = main()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the point: any error becomes one line
        log_dir = Path(os.environ.get("CDTM_LOG_DIR") or tempfile.gettempdir())
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        where = log_dir / f"cdtm-{name}-{stamp}-{os.getpid()}.log"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            where.write_text(traceback.format_exc())
            logging.getLogger(f"cdtm.jobs.{name}").debug("traceback in %s", where)
            hint = f" (traceback: {where})"
        except OSError:
            hint = ""
        print(f"{name} failed: {_one_line(e)}{hint}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def _one_line(e: BaseException) -> str:
    """What failed, in one line: a JVM error by its Java exception's message."""
    java = getattr(e, "java_exception", None)
    if java is not None:
        text = str(java.toString())
        while java.getCause() is not None:  # the root cause says what actually went wrong
            java = java.getCause()
            text = str(java.toString())
    else:
        text = f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [""])[0][:500]
