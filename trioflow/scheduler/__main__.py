"""``python -m trioflow.scheduler`` is ``trioflow-scheduler``."""

from ..cli import scheduler_main

scheduler_main()
