"""Where a cluster's model comes from: a given Hugging Face directory, or a built-in one
built on first use."""

from __future__ import annotations

from pathlib import Path

from orchestrator.model_builder import ModelSize, build_model

DEFAULT_MODEL_ROOT = Path.home() / ".cache" / "tide" / "models"


def resolve_model(model: str | None, root: Path = DEFAULT_MODEL_ROOT) -> str:
    """A path to a model directory vLLM can load. `None` or a built-in size name
    (`tiny`, `small`) builds that model under `root` if it is not there yet."""
    if model is None:
        model = ModelSize.TINY.value
    if model in {size.value for size in ModelSize}:
        return str(build_model(ModelSize(model), root / model))
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    return str(path.resolve())
