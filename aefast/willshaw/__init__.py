"""The bit-packed Willshaw associative memory: ``WillshawMemory`` and its storage analysis, ``theory``."""
from aefast.willshaw import theory
from aefast.willshaw.memory import MAX_UNITS, WillshawMemory
from aefast.willshaw.memory_file import WillshawFileError
from aefast.willshaw.patterns import random_patterns

__all__ = ["MAX_UNITS", "WillshawFileError", "WillshawMemory", "random_patterns", "theory"]
