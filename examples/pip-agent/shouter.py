"""An agent written outside the agentbus workspace: ``pip install agentbus-runtime``."""

import msgspec

from agentbus import Agent, TaskContext


class Word(msgspec.Struct):
    """A word to shout."""

    text: str


agent = Agent("shouter", max_concurrency=4)


@agent.handler("shout")
async def shout(ctx: TaskContext, word: Word) -> Word:
    """Return ``word`` in capitals."""
    return Word(text=word.text.upper())


if __name__ == "__main__":
    agent.main()
