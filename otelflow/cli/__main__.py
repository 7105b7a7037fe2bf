"""``python -m otelflow.cli``: the ``otelflow`` command without its console script."""

from __future__ import annotations

import sys

from otelflow.cli.main import main

sys.exit(main())
