"""Build the one AsyncEngine a server process shares."""

from __future__ import annotations

from hagmoe.engine.async_engine import AsyncEngine
from hagmoe.engine.config import engine_config
from hagmoe.engine.llm import load_engine
from server.settings import Settings


def build_engine(settings: Settings) -> AsyncEngine:
    """Load the model folder onto the device; the engine thread is not started yet."""
    config = engine_config(
        settings, collect_routing_stats=True, scheduling_policy=settings.scheduling_policy
    )
    return AsyncEngine(load_engine(settings.model, None, config))
