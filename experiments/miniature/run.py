"""A miniature run folder: where each step's output goes, and steps skipped once their last output exists."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from .presets import PRESETS, Preset

console = Console(highlight=False)


@dataclass
class Run:
    out: Path
    preset_name: str
    seed: int
    hub_endpoint: str | None = None
    timings: dict = field(default_factory=dict)

    @property
    def preset(self) -> Preset:
        return PRESETS[self.preset_name]

    def path(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def model(self, name: str) -> Path:
        return self.path("models", name)

    def command(self) -> str:
        return f"codellama-hf reproduce --preset {self.preset_name} --out {self.out} --seed {self.seed}"

    def step(self, name: str, done: Path, action) -> None:
        """Run `action` unless `done` exists (the step's last, atomically written output)."""
        if done.exists():
            console.print(f"[dim]skip {name}: {done} is complete[/dim]")
            return
        console.rule(f"[bold]{name}")
        started = time.monotonic()
        action()
        if not done.exists():
            raise RuntimeError(f"step {name} finished without writing {done}")
        self.timings[name] = round(time.monotonic() - started, 1)
        console.print(f"[green]{name} done in {self.timings[name]:.0f} s[/green]")
