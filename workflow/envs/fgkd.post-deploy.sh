#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, from the workflow's folder (the checkout): fgkd's exact
# dependencies, then fgkd itself in editable mode, as scripts/bootstrap installs them into .venv.
set -euo pipefail
pip install -r requirements.lock
pip install --no-deps -e .
