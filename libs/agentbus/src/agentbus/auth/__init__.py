"""Who may do what on the bus and at the gateway.

- ``nats_jwt``: NATS operator, account and user JWTs, signed with nkeys;
- ``authority``: the fleet's keys and server configuration (``agentbus auth init``),
  and minting users;
- ``permissions``: the allow-lists of every identity (services, operators, agents);
- ``creds``: reading a ``.creds`` file;
- ``tokens``: bearer tokens of the HTTP gateway (``ApiToken`` in KV ``<p>_tokens``);
- ``tls``: a local CA and the certificates of a TLS stack (``agentbus auth tls``), and
  the ``tls {}`` block of a nats-server configuration.

``docs/decisions/0003-nats-auth.md`` says why decentralized JWT auth; ``docs/protocol.md``,
"Permissions", holds the tables.
"""
