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


# The defects of the second table (serving, evaluation, chat and download cases N1-N65, and row 105) and the
# tests that pin each fix.
NEW_DEFECTS = {
    "N2": "test_serving_guard.py::test_an_api_key_guards_the_api_and_metrics_but_not_health",
    "N17": "test_serving_guard.py::test_a_40_mb_text_body_is_refused_before_it_is_tokenized_while_others_are_answered",
    "N19": "test_serving_guard.py::test_a_lone_surrogate_in_the_text_is_a_400_naming_where",
    "N32": "test_serving_guard.py::test_a_client_that_leaves_mid_body_is_no_error_and_a_stalled_body_is_closed",
    "N56": "test_probes_loading.py::test_a_missing_two_part_relative_path_is_a_missing_folder",
    "N57": "test_probes_loading.py::test_a_missing_two_part_relative_path_is_a_missing_folder",
    "N59": "test_chat.py::test_a_message_too_long_for_the_model_fails_alone_and_the_chat_goes_on",
    "N60": "test_chat.py::test_max_new_tokens_beyond_the_models_positions_is_refused_at_start",
    "N61": "test_chat.py::test_ctrl_c_during_an_answer_stops_it_and_the_chat_goes_on",
    "N63": "test_extras.py::test_download_where_pip_cannot_install_ends_in_a_clear_error",
    "127": "test_probes_wrapping.py::"
           "test_rows_127_128_a_wrong_layout_is_our_error_alone_without_transformers_load_report",
}


def test_every_defect_of_the_second_table_has_its_test():
    import ast

    for row, name in NEW_DEFECTS.items():
        file, function = name.split("::")
        tree = ast.parse((Path(__file__).parent / file).read_text())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, (row, name)
