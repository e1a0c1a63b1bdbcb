"""The bit-packed Willshaw associative memory: ``WillshawMemory``, ``ShardedWillshawMemory`` (split over
torch.distributed ranks), its storage analysis ``theory`` and the ``experiments`` built on it."""
from aefast.willshaw import theory
from aefast.willshaw.memory import MAX_UNITS, WillshawMemory
from aefast.willshaw.memory_file import WillshawFileError
from aefast.willshaw.patterns import random_patterns
from aefast.willshaw.sharded import ShardedWillshawMemory

__all__ = ["MAX_UNITS", "ShardedWillshawMemory", "WillshawFileError", "WillshawMemory", "random_patterns", "theory"]
