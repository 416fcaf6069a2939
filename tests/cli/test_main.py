"""The command line's own promises: help and the HTTP load test never load torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOADED = (
    "import sys\nfrom specserve.cli.main import main\n"
    "try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["bench", "serve", "--help"], ["bench", "--help"], ["serve", "--help"], ["train", "--help"]],
)
def test_help_loads_no_torch(argv):
    out = subprocess.run(
        [sys.executable, "-c", LOADED.format(argv=argv)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"  # neither torch nor transformers


def test_every_subcommand_is_listed(capsys):
    from specserve.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in ("serve", "generate", "bench", "train"))
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in ("decode", "serve", "tree", "overhead"))
