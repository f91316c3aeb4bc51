"""``python -m flowlearn.serving [--config FILE]``: the predictor."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from conf import load_settings
from flowlearn.serving.app import make_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings(args.config)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(settings), host=settings.predictor.host, port=settings.predictor.port,
                access_log=None)


if __name__ == "__main__":
    main()
