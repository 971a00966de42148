"""The networks of one run by name: one list for the CLI, the trainer, the workflow and the reports (the schema's
`stages` key names are tested against it). Torch-free: the workflow imports it while it plans."""

# `fgkd train --stage`: the loss a network trains with; fgkd.methods.METHODS implements each (tested).
METHOD_STAGES = ("teacher", "student", "auxkd")

# The networks trained once per seed and shared by every variant, with their `fgkd train` arguments; beside them, each
# variant trains student_1..student_K and its aux-KD student ("auxkd").
SHARED_STAGES = {
    "teacher": "--stage teacher",
    "auxkd_ce": "--stage teacher --name auxkd_ce",  # aux-KD baseline: the aux-KD student's options, CE alone
    "auxkd_single": "--stage auxkd --name auxkd_single",  # aux-KD baseline: KD from the teacher alone
}
AUXKD_BASELINES = ("auxkd_ce", "auxkd_single")  # trained with the aux-KD student's stage options
