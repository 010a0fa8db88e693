"""Generates the dashboards' JSON (dashboards/generated/) from their code.

    python -m dashboards.build           # write
    python -m dashboards.build --check   # fail if the committed JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import elasticity, energy, kv_movement, overview, pools

GENERATED = Path(__file__).parent / "generated"
BUILDERS = (overview.build, pools.build, kv_movement.build, elasticity.build, energy.build)


def render() -> dict[str, str]:
    """File name -> dashboard JSON."""
    files = {}
    for build in BUILDERS:
        board = build().build()
        files[f"{board.uid}.json"] = JSONEncoder(sort_keys=True, indent=2).encode(board) + "\n"
    return files


def load_generated(directory: Path = GENERATED) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    files = render()
    stale = [name for name, text in files.items()
             if not (GENERATED / name).exists() or (GENERATED / name).read_text() != text]
    extra = sorted({p.name for p in GENERATED.glob("*.json")} - set(files))
    if args.check:
        if stale or extra:
            print(f"dashboards out of date: {stale + extra}; run `python -m dashboards.build`", file=sys.stderr)
            return 1
        print(f"{len(files)} dashboards up to date")
        return 0
    GENERATED.mkdir(exist_ok=True)
    for name in extra:
        (GENERATED / name).unlink()
    for name, text in files.items():
        (GENERATED / name).write_text(text)
    print(f"wrote {len(files)} dashboards to {GENERATED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
