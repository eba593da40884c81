"""One logistik process: the wiring that builds every part, and the supervision of its tasks."""

from logistik.process.memory import tune_gc
from logistik.process.supervisor import Supervisor
from logistik.process.wiring import Runner

__all__ = ["Runner", "Supervisor", "tune_gc"]
