"""``python -m agentbus.cli``."""

from agentbus.cli import main

main()
