"""Where the bundled default suite lives: package data of `specserve.models`, so a checkout and
an installed `specserve` find it from any working directory."""

from __future__ import annotations

from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent / "default_suite"


def default_suite() -> dict[str, str] | None:
    """Paths of the bundled target/draft (and Medusa heads once they exist), or None if not bundled."""
    target, draft = SUITE_DIR / "target", SUITE_DIR / "draft"
    if not (target / "config.json").is_file():
        return None
    paths = {"target": str(target)}
    if (draft / "config.json").is_file():
        paths["draft"] = str(draft)
    heads = SUITE_DIR / "medusa"
    if (heads / "config.json").is_file():
        paths["medusa"] = str(heads)
    return paths
