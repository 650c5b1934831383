"""The benchmark layer: the worlds the demo and ``compare`` run in (the library never imports it)."""

from .worlds import WORLDS, World, world, world_of

__all__ = ["WORLDS", "World", "world", "world_of"]
