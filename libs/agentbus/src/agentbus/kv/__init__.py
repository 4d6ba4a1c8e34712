"""KV buckets read as state.

- ``mirror``: ``KvMirror``, a bucket mirrored in memory by a watch that heals;
- ``replay``: a whole bucket, or a bounded page of it, in one watch replay;
- ``lease``: ``KvLease``, a singleton duty held by one instance at a time;
- ``leader``: ``leader_get``, one entry as the bucket's stream leader has it.
"""
