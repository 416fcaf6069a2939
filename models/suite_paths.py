"""Where the bundled default suite lives: package data of `specserve.models`, so a checkout and
an installed `specserve` find it from any working directory."""

from __future__ import annotations

from pathlib import Path

SUITE_DIR = Path(__file__).resolve().parent / "default_suite"


def default_suite() -> dict[str, str] | None:
    """Paths of the bundled target/draft (and Medusa and EAGLE heads where present), or None."""
    target, draft = SUITE_DIR / "target", SUITE_DIR / "draft"
    if not (target / "config.json").is_file():
        return None
    paths = {"target": str(target)}
    if (draft / "config.json").is_file():
        paths["draft"] = str(draft)
    for name in ("medusa", "eagle"):
        if (SUITE_DIR / name / "config.json").is_file():
            paths[name] = str(SUITE_DIR / name)
    return paths
