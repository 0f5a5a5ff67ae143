"""The terminal UI (``edgeinfer chat`` and ``edgeinfer top``), built on Textual.

A thin shell over :mod:`edgeinfer.client`: it never imports the engine, the pool, the cache or
the server (an import-linter contract says so), and the daemon side never imports it. Tests drive
it through :class:`edgeinfer.tui.fake.FakeClient`, which stands in for the daemon.

Modules: ``port`` (the client methods the TUI uses), ``view`` (pure formatting of responses and
``/stats`` snapshots), ``store`` (conversations in SQLite), ``chat`` / ``stats`` / ``help``
(widgets and screens), ``app`` (the apps, connection and reconnection).
"""
