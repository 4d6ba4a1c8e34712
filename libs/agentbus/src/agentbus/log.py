"""Logging setup with loguru, for ``__main__`` modules only (libraries never add sinks)."""

from __future__ import annotations

import inspect
import logging
import sys

from loguru import logger


class InterceptHandler(logging.Handler):
    """Route stdlib logging (nats-py, aiodocker, uvicorn) into loguru (loguru README)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record`` to loguru at the same level, keeping the caller depth."""
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(service: str, *, level: str = "INFO", json: bool = False) -> None:
    """Send logs to stderr, as text or as one JSON object per line.

    ``diagnose`` is off so variable values never leak into logs (loguru README).
    """
    logger.remove()
    logger.configure(extra={"service": service})
    fmt = (
        "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "<cyan>{extra[service]}</cyan> {message} <dim>{extra}</dim>"
    )
    logger.add(
        sys.stderr,
        level=level.upper(),
        serialize=json,
        format="{message}" if json else fmt,
        backtrace=False,
        diagnose=False,
    )
    logging.basicConfig(handlers=[InterceptHandler()], level=logging.WARNING, force=True)
