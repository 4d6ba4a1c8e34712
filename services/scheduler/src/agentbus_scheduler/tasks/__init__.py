"""Tasks: admission, records, results, retries, dead letters, cancellation, sweeps."""
