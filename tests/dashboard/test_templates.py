"""Static checks of the dashboard's templates (no browser: what htmx would do with them)."""

import re
from pathlib import Path

import agentbus_gateway.dashboard

TEMPLATES = Path(agentbus_gateway.dashboard.__file__).parent / "templates"
TAG = re.compile(r"<[a-zA-Z][^>]*>", re.DOTALL)


def test_a_refreshing_region_does_not_hand_its_queue_to_its_buttons() -> None:
    """htmx inherits ``hx-sync``: a button inside a region refreshed with
    ``hx-sync="this:queue last"`` would queue its POST behind the region's refresh GET, and
    the next refresh would replace the queued click (a Resubmit or Approve lost)."""
    regions = []
    for template in sorted(TEMPLATES.glob("*.html")):
        for tag in TAG.findall(template.read_text()):
            if "hx-sync=" in tag:
                regions.append(template.name)
                assert 'hx-disinherit="hx-sync"' in tag, f"{template.name}: {tag}"
    assert "task.html" in regions and "approvals.html" in regions
