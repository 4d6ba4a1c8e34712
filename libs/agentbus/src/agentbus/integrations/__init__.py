"""Adapters to other agent frameworks; each is an optional extra and is imported only by name.

* ``agentbus.integrations.langgraph``: a LangGraph checkpointer on the checkpoint
  service (``pip install 'agentbus-runtime[langgraph]'``).
"""
