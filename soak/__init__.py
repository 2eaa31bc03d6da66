"""The soak: a real gunicorn serving the example app against a real control plane, under faults.

`python -m soak --seconds N --out build/soak/` starts `RealCluster`, serves
``example_app.app:create_app()`` with gunicorn (gthread, 2 workers x 8 threads), drives a bounded
load of callers whose right answer is known (`soak.oracle`), applies faults on a schedule
(`soak.faults`: kube-apiserver killed and restarted, frozen, down past the stale window, etcd
restarted), and writes ``result.json`` and ``timeline.png``. It exits non-zero on any wrong
decision, hung request or undocumented 5xx. ``docs/reliability.md`` says what is checked.
"""
