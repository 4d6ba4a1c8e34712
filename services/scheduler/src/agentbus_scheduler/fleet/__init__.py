"""Fleet placement: deployment specs, the fleet state, placing replicas onto nodes."""
