"""Every row of the bad-input probe table (131 cases tried as a new user would) has a regression test.

The table-driven files tests/test_probes_*.py each export ROWS, the probe rows their CASES cover; together they
must cover rows 1..131, and the command-line rows must also run as subprocesses (tests/test_probes_cli*.py)."""

import importlib
from pathlib import Path

PROBE_ROWS = set(range(1, 132))
# rows that are command lines: generate, convert and train (108 and 109, kills, run as processes in test_train.py;
# 111, a full disk, cannot be made without mounting a filesystem and is simulated in test_probes_training.py)
CLI_ROWS = set(range(1, 33)) | set(range(78, 120)) - {108, 109, 111}


def rows_of(module: str) -> set[int]:
    return set(importlib.import_module(module).ROWS)


def test_every_probe_row_has_a_case():
    files = sorted(Path(__file__).parent.glob("test_probes_*.py"))
    covered = set().union(*(rows_of(f.stem) for f in files if f.stem != "test_probes_coverage"))
    assert PROBE_ROWS - covered == set(), f"probe rows without a case: {sorted(PROBE_ROWS - covered)}"


def test_cli_rows_run_as_subprocesses():
    missing = CLI_ROWS - rows_of("test_probes_cli") - rows_of("test_probes_cli_train")
    assert not missing, f"CLI rows not run as a subprocess: {sorted(missing)}"
