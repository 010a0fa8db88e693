"""The compiled simulator (sim/native.py): same results as the sources, never stale."""

import json
import shutil

import pytest

from sim import native


def test_the_compiled_simulator_gives_exactly_the_sources_results():
    built = native.build()
    assert native.current_build() == built
    scenarios = native.check()
    # The scenarios reach the paths they are there for.
    assert scenarios["colocated_migration"]["summary"]["num_migrations"] > 0
    assert scenarios["parameter_dropping"]["actions"]["dropped"] > 0
    assert scenarios["parameter_dropping"]["actions"]["restored"] > 0
    assert scenarios["disaggregated_per_pool_clocks"]["actions"]["SetPoolClock"] > 0
    assert scenarios["kv_offload"]["records"] != scenarios["parameter_dropping"]["records"]


def test_a_build_is_used_only_while_its_sources_are_unchanged(tmp_path):
    for module in native.HOT_MODULES:
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(native.ROOT / module, tmp_path / module)
    directory = native.build_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / native.MANIFEST).write_text(json.dumps({"digest": native.source_digest(tmp_path)}))
    assert native.current_build(tmp_path) is not None
    replica = tmp_path / "sim" / "replica.py"
    replica.write_text(replica.read_text() + "\n# edited\n")
    assert native.current_build(tmp_path) is None
    assert native.activate(tmp_path) is None


def test_activating_after_the_pure_modules_loaded_is_refused():
    import policies.snapshot  # noqa: F401  (this process runs the sources)

    native.build()
    with pytest.raises(RuntimeError, match="before importing"):
        native.activate()
