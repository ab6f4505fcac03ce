"""The composition root: the ``egress-filter`` command, ``run``, ``export`` and the legal reports.

Only this package imports the adapters (``dns_blocker``, ``proxy_addons``,
``replay``), to register their subcommands.  What the adapters share with it,
the policy holder, the event writer and the common flags, is ``runtime``, so
no adapter imports this package (tests/test_layers.py checks it).
"""
