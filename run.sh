#!/usr/bin/env bash
# One command on a fresh machine: a virtual environment from requirements.txt, then the whole loop
# (dataset build, bar VAE, small SFS model, a composed song) on the embedded synthetic data.
# Extra arguments go to experiments.quickstart, e.g. --pop909=../shared/data/pop909 --workdir=runs/pop909.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements.txt
python -m pip install --quiet --no-deps -r requirements-nodeps.txt
python -m experiments.quickstart "$@"
