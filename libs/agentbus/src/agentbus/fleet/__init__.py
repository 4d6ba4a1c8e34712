"""Fleets: deployments declared, checked and looked at.

- ``spec``: fleet files (YAML) into ``Deployment``s, every error with file, line, field;
- ``checks``: the checks of a deployment its types cannot express (the scheduler runs
  them too);
- ``view``: the rows of ``agentbus ps`` and ``agentbus nodes``;
- ``logs``: replicas' output from the logs stream, followed live.
"""
