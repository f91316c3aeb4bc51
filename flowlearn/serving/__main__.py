"""``python -m flowlearn.serving [--config FILE]``: run the predictor until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flowlearn.conf import load_settings
from flowlearn.serving.workers import PortInUse, serve


def _baseline(text: str) -> tuple[str, Path]:
    model_id, sep, path = text.partition("=")
    if not sep or not model_id or not path:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    return model_id, Path(path)


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected >= 1, or 0 for one per CPU; got {text!r}")
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flowlearn.serving", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file over conf/defaults.toml (else FLOWLEARN_CONFIG)",
    )
    parser.add_argument(
        "--baseline",
        type=_baseline,
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="a baseline file scored beside MODEL (repeatable; adds to predictor.baselines)",
    )
    parser.add_argument(
        "--ab-fraction",
        type=float,
        default=None,
        help="share of requests answered by the baseline (0: shadow only; "
        "default predictor.ab_fraction)",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not log predictions to the events topic (default predictor.log_predictions)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="processes serving the port (0: one per CPU; default predictor.workers)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings(args.config)
    p = settings.predictor
    try:
        code = serve(
            settings,
            workers=p.workers if args.workers is None else args.workers,
            baselines={**p.baselines, **dict(args.baseline)},
            ab_fraction=p.ab_fraction if args.ab_fraction is None else args.ab_fraction,
            log_predictions=p.log_predictions and not args.no_log,
        )
    except PortInUse as exc:
        sys.exit(f"python -m flowlearn.serving: {exc}")
    sys.exit(code)


if __name__ == "__main__":
    main()
