"""Sample a Prometheus ``/metrics`` page into a file, from inside a host.

Run as a script inside a host's namespace (``Host.spawn``), so it reaches the host's
own services while the host is partitioned: ``python metrics_probe.py URL FILE
[NAME...]``. Every ``EVERY_S`` it appends ``<monotonic_s> <value of each NAME>`` (``-``
for a name the page lacks or a page that did not answer). ``CLOCK_MONOTONIC`` is one
clock for every namespace of the machine, so the test compares the times to its own.
Stdlib only; runs until killed.
"""

from __future__ import annotations

import sys
import time
import urllib.request

EVERY_S = 0.2


def sample(url: str, names: list[str]) -> list[str]:
    """The values of ``names`` on the page at ``url`` (``-`` when absent)."""
    try:
        with urllib.request.urlopen(url, timeout=0.5) as page:
            text = page.read().decode()
    except OSError:
        return ["-"] * len(names)
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = value
    return [values.get(name, "-") for name in names]


def main() -> None:
    url, path, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path, "a") as out:
        while True:
            out.write(" ".join([f"{time.monotonic():.3f}", *sample(url, names)]) + "\n")
            out.flush()
            time.sleep(EVERY_S)


if __name__ == "__main__":
    main()
