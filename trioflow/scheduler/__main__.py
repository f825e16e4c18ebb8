"""``python -m trioflow.scheduler`` is ``trioflow-scheduler``."""

from ..process.launch import scheduler_main

scheduler_main()
