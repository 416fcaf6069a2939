"""A fake clock for wall-clock budgets: tests of a budgeted loop then assert what the loop does with
its budget, not how fast this machine runs (a loaded machine once gave 6 steps where 25 were due)."""

from __future__ import annotations

import time
from types import ModuleType


class FakeClock:
    """Stands in for a module's `time`: perf_counter advances `tick` seconds a call, sleep advances
    it too; anything else is the real module's."""

    def __init__(self, tick: float = 0.005) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str):
        return getattr(time, name)

    def install(self, monkeypatch, *modules: ModuleType) -> FakeClock:
        for module in modules:
            monkeypatch.setattr(module, "time", self)
        return self
