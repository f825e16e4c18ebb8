"""``python -m trioflow.worker ADDRESS`` is ``trioflow-worker ADDRESS``."""

from ..cli import worker_main

worker_main()
