"""Which tests may kill which mutants, for scripts/mutate (mutmut loads this plugin through [tool.mutmut]
pytest_add_cli_args; a plain pytest run never does).

mutmut runs, for each mutant, every selected test that called the mutated function, however deep: a mutant in
fgkd.data.dataset would run every test that trains a network. Here each module names the tests meant to check it;
the others are deselected while a mutant runs (a mutant left with none is "no tests"). The stats, clean and
forced-fail runs of mutmut are not mutants and run the whole selection."""

import fnmatch
import os

import pytest

TRAINS_EVERY_STAGE = ["tests/test_train.py::test_an_attention_map_of_one_position",
                      "tests/test_train.py::test_every_stage_runs_and_writes_its_contract"]
SELECTION = ["tests/test_train.py::test_model_pt_holds_the_weights_of_the_epoch_best_on_validation",
             "tests/test_train.py::test_without_a_validation_split_the_last_epoch_is_kept"]

# mutmut mutant-name glob -> node-id prefixes of the tests that may kill its mutants (first matching glob wins).
SCOPE = {
    "fgkd.losses.*": ["tests/test_losses.py", "tests/test_methods.py", "tests/test_variants.py", *TRAINS_EVERY_STAGE],
    "fgkd.methods.*": ["tests/test_methods.py", "tests/test_losses.py", "tests/test_variants.py",
                       *TRAINS_EVERY_STAGE],
    "fgkd.metrics.*": ["tests/test_ensemble.py", "tests/test_report.py", "tests/test_classify.py",
                       "tests/test_evaluate.py", "tests/test_train.py::test_validation_accuracy_counts_ties"],
    "fgkd.paired.*": ["tests/test_paired.py", "tests/test_report.py"],
    "fgkd.ensemble.*": ["tests/test_ensemble.py", "tests/test_report.py", "tests/test_evaluate.py",
                        "tests/test_preprocessing.py"],
    "fgkd.data.dataset.*": ["tests/test_dataset.py", "tests/test_preprocessing.py", "tests/test_classify.py",
                            "tests/test_images.py", "tests/test_part_attention.py"],
    "fgkd.config.*": ["tests/test_identity.py", "tests/test_verify.py"],
    "fgkd.data.manifest.*": ["tests/test_identity.py", "tests/test_verify.py", "tests/test_dataset.py"],
    "fgkd.modelfile.*": ["tests/test_identity.py", "tests/test_model_files.py", "tests/test_classify.py",
                         "tests/test_export.py", "tests/test_preprocessing.py", "tests/test_verify.py"],
    "fgkd.verify.*": ["tests/test_verify.py"],
    "fgkd.classify.*": ["tests/test_classify.py"],
    "fgkd.export.*": ["tests/test_export.py"],
    "fgkd.train.x_is_best*": SELECTION,
    "fgkd.train.x_initialise_from*": ["tests/test_start_weights.py",
                                      "tests/test_timm_backbones.py::test_init_from_a_vit_of_another_crop"],
    "fgkd.train.*": ["tests/test_train.py", "tests/test_start_weights.py", "tests/test_evaluate.py"],
    "fgkd.distributed.*": ["tests/test_timm_backbones.py::test_synchronised_batch_norm",
                           "tests/test_timm_backbones.py::test_a_synchronised_batch_norm_trains",
                           "tests/test_timm_backbones.py::test_a_batch_norm_fgkd_cannot_make_synchronous"],
}


@pytest.hookimpl(trylast=True)  # after tests/conftest.py's reordering
def pytest_collection_modifyitems(config, items):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")  # set by mutmut in the process that tests a mutant
    if "__mutmut_" not in mutant:
        return
    # mutmut names a mutant's tests fastest first (pytest -x stops at the first failure), but tests/conftest.py
    # moves test_train.py's to the front for xdist: back to mutmut's order.
    order = {arg: i for i, arg in enumerate(config.args)}
    items.sort(key=lambda item: order.get(item.nodeid, len(order)))
    allowed = next((tuple(tests) for glob, tests in SCOPE.items() if fnmatch.fnmatch(mutant, glob)), None)
    if allowed is None:
        return
    dropped = [item for item in items if not item.nodeid.startswith(allowed)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.nodeid.startswith(allowed)]
