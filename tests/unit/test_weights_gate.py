"""The weights gate: engine processes mark their arrival and wait for the opener; a gate
nobody opens fails the start instead of hanging it; past the gate, weights load as vLLM's
default loader loads them."""

import threading
import time

import pytest
from vllm.config import LoadConfig
from vllm.model_executor.model_loader import get_model_loader

from actors.weights_gate import LOAD_FORMAT, GatedModelLoader, GateTimeout, WeightsGate


def test_arrivals_are_counted_and_the_wait_ends_when_the_gate_opens(tmp_path):
    gate = WeightsGate(tmp_path / "gate")
    assert gate.num_arrived() == 0  # asked before the start made the directory
    gate.reset()
    waited: list[float] = []

    def stage():
        gate.arrive()
        started = time.monotonic()
        gate.wait_open(timeout_s=30)
        waited.append(time.monotonic() - started)

    worker = threading.Thread(target=stage)
    worker.start()
    deadline = time.monotonic() + 10
    while gate.num_arrived() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.num_arrived() == 1
    time.sleep(0.3)
    assert worker.is_alive() and not waited  # still waiting: the gate is shut
    gate.open()
    worker.join(timeout=5)
    assert waited and waited[0] >= 0.3
    gate.remove()
    assert not (tmp_path / "gate").exists()


def test_a_gate_nobody_opens_fails_the_start(tmp_path):
    gate = WeightsGate(tmp_path / "gate")
    gate.reset()
    with pytest.raises(GateTimeout, match="did not open within"):
        gate.wait_open(timeout_s=0.2)


def test_a_reset_forgets_an_earlier_start(tmp_path):
    gate = WeightsGate(tmp_path / "gate")
    gate.reset()
    gate.arrive()
    gate.open()
    gate.reset()
    assert gate.num_arrived() == 0 and not gate.is_open


def test_a_start_waits_behind_the_gate_from_its_reset_until_it_opens(tmp_path):
    gate = WeightsGate(tmp_path / "gate")
    assert not gate.is_waiting  # no gated start
    gate.reset()
    assert gate.is_waiting
    gate.open()
    assert not gate.is_waiting
    gate.remove()
    assert not gate.is_waiting


def test_the_gated_format_is_vllms_default_loader_behind_the_wait():
    loader = get_model_loader(LoadConfig(load_format=LOAD_FORMAT))
    assert isinstance(loader, GatedModelLoader)
    assert loader.load_config.load_format == "auto"
