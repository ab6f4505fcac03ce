"""What every running part shares: the policy holder, the event writer and the CLI flags.

Data flows one way: ``policies`` (pure) ← ``runtime`` ← the adapters
(``dns_blocker``, ``proxy_addons``, ``replay``) ← ``egress_filter`` (the
composition root: the ``egress-filter`` command and ``run``).  Each package
imports only packages to its left, so the adapters never import the CLI
package or each other (tests/test_layers.py checks it with ``ast``).

* ``holder``: ``PolicyHolder``, the one policy both servers read, hot reloads
  and phase changes;
* ``eventlog``: ``EventLog``, the one non-blocking JSON-lines event writer, and
  its Prometheus collector;
* ``args``: the flags every policy-reading command shares and the
  ``file:line`` exit on a bad policy;
* ``notify``: sd_notify (``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
  ``STATUS=``) to systemd or to ``egress-filter run``.
"""
