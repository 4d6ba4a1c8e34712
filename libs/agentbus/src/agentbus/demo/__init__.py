"""The review demo: agents review a source tree over the bus.

- ``review``: the demo itself (a stack, the reviewer deployment, the tasks);
- ``runtime``: containers or processes, whichever this machine runs;
- ``stigmergy``: the mode without a task list, coordinated by traces;
- ``live``: the ``summarizer`` deployment and its live totals, checked at the end;
- ``report``: the summary and the comparison of modes.
"""
