"""``python -m trioflow.scheduler`` is ``trioflow-scheduler``."""

from .._launch import scheduler_main

scheduler_main()
