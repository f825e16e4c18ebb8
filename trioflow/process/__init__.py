"""Process life: everything about the operating-system processes trioflow runs.

One module per concern, none imported here (a worker process loads only
what it uses):

``launch``     the console entry points that settle the interpreter first
               (re-exec onto glibc's malloc)
``daemon``     what a daemon does besides serving: logging, preload modules,
               one-line errors, and the one start-up/shutdown path
               (:func:`~trioflow.process.daemon.run_servers`) that the
               command line and a nanny's worker process share
``nanny``      the nanny, and its link to the worker process it supervises
               (both ends: ``python -m trioflow.process.nanny`` is the child)
``lifecycle``  :class:`~trioflow.process.lifecycle.Status`, the state every
               server reports
``signals``    SIGINT/SIGTERM -> close, a second one is fatal
``pidfile``    ``--pid-file``
``workspace``  workers' scratch directories, and removing dead workers' ones
``malloc``     glibc heap settings: trim, arena limit, the workers' environment
``system``     facts about this machine and its processes (/proc or psutil)
"""
