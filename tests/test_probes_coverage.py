"""Every row of the bad-input probe table (131 cases tried as a new user would) has a regression test.

The table-driven files tests/test_probes_*.py each export ROWS, the probe rows their CASES cover; together they
must cover rows 1..131, and the CLI rows must also run as subprocesses (tests/test_probes_cli.py)."""

import importlib
from pathlib import Path

PROBE_ROWS = set(range(1, 132))
# generate / convert rows run through the command line (the train rows run in tests/test_probes_training*.py)
CLI_ROWS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28, 29, 31, 32,
            78, 79, 80, 82, 83, 84, 85, 86}


def rows_of(module: str) -> set[int]:
    return set(importlib.import_module(module).ROWS)


def test_every_probe_row_has_a_case():
    files = sorted(Path(__file__).parent.glob("test_probes_*.py"))
    covered = set().union(*(rows_of(f.stem) for f in files if f.stem != "test_probes_coverage"))
    assert PROBE_ROWS - covered == set(), f"probe rows without a case: {sorted(PROBE_ROWS - covered)}"


def test_cli_rows_run_as_subprocesses():
    missing = CLI_ROWS - rows_of("test_probes_cli")
    assert not missing, f"CLI rows not run as a subprocess: {sorted(missing)}"
