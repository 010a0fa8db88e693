"""A gate before an engine's weights: the engine's processes start (imports, distributed
set-up, model config) while the replicas it replaces still serve, and wait there until the
gate opens; only then do they claim device memory for weights and KV.

A parameter drop's pipeline starts this way while its members still decode, and a
restore's members while the pipeline still serves, so the group serves nothing only for
the switch (the hand-over, the old engines' stop, the new engine's weights and KV), not
for the processes' start. On a GPU the waiting processes hold a device context
and no weights, so the memory the switch frees is not needed before the gate opens.

The gate is a directory: each process that loads weights (one per pipeline stage) marks
its arrival there and waits for the `open` file. `GatedModelLoader` is vLLM's default
loader behind that wait, registered as the load format `tide_gated`; the module is
imported in the engine's processes through the worker extension (actors/pipeline_stage.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

LOAD_FORMAT = "tide_gated"
GATE_ENV = "TIDE_WEIGHTS_GATE"
GATE_TIMEOUT_ENV = "TIDE_WEIGHTS_GATE_TIMEOUT_S"
_POLL_S = 0.02


class GateTimeout(RuntimeError):
    """The gate did not open in time (its opener is gone): the engine start fails."""


class StartBehindGate(RuntimeError):
    """A second start of a replica whose engine waits behind its gate."""


class WeightsGate:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def reset(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            entry.unlink()

    def remove(self) -> None:
        if self.directory.exists():
            for entry in self.directory.iterdir():
                entry.unlink()
            self.directory.rmdir()

    def arrive(self) -> None:
        (self.directory / f"arrived-{os.getpid()}").touch()

    def num_arrived(self) -> int:
        if not self.directory.exists():
            return 0
        return sum(1 for e in self.directory.iterdir() if e.name.startswith("arrived-"))

    def open(self) -> None:
        (self.directory / "open").touch()

    @property
    def is_open(self) -> bool:
        return (self.directory / "open").exists()

    @property
    def is_waiting(self) -> bool:
        """Set up for a start that has not passed it yet."""
        return self.directory.exists() and not self.is_open

    def wait_open(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_open:
            if time.monotonic() > deadline:
                raise GateTimeout(f"the weights gate {self.directory} did not open within {timeout_s:.0f} s")
            time.sleep(_POLL_S)


@register_model_loader(LOAD_FORMAT)
class GatedModelLoader(DefaultModelLoader):
    def __init__(self, load_config):
        # Past the gate, weights load as vLLM's default ("auto") would load them.
        super().__init__(dataclasses.replace(load_config, load_format="auto"))

    def load_model(self, vllm_config, model_config, prefix: str = ""):
        directory = os.environ.get(GATE_ENV)
        if directory:
            gate = WeightsGate(Path(directory))
            gate.arrive()
            gate.wait_open(float(os.environ.get(GATE_TIMEOUT_ENV, "300")))
        return super().load_model(vllm_config, model_config, prefix)
