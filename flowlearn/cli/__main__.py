"""``python -m flowlearn.cli``: the ``flowlearn`` command."""

from flowlearn.cli.main import main

raise SystemExit(main())
