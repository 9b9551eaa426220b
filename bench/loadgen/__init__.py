"""
The benchmark load generator: worker processes (L{worker}) holding many
classic-client connections each, driven by a synchronous coordinator
(L{coordinator.LoadGen}) that the scenarios call.
"""

from .coordinator import LoadGen, LoadGenError, StepResult, StormResult, User, workersFor

__all__ = ["LoadGen", "LoadGenError", "StepResult", "StormResult", "User", "workersFor"]
