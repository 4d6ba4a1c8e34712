"""Many machines: nats-server cluster and leaf-node configuration, cluster status.

``conf`` writes the configuration of one server of a cluster (routes, JetStream,
server name) or of a leaf node; ``status`` reads which server leads each stream, the
replicas' lag and lost quorum.
"""
