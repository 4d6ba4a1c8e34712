"""Trust between the processes of a stack.

- ``tls``: a local CA and the certificates of a TLS stack (``agentbus auth tls``), and
  the ``tls {}`` block of a nats-server configuration.
"""
