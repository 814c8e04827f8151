"""``mirror-py port-forward``: tools that are not Python (psql, redis-cli, a browser) reach what the pod reaches.

The forwarder is one more client of a session: each connection accepted on the laptop is joined to a stream of
the session's agent exactly as an interposed app's socket is (the session's ``dns`` and ``connect`` operations),
so it shares a running session's agent, and its counters, instead of starting another agent per tool.
"""
