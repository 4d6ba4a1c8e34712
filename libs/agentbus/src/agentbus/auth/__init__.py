"""Credentials and who may do what.

- ``tokens``: bearer tokens of the HTTP gateway (``ApiToken`` in KV ``<p>_tokens``).
"""
