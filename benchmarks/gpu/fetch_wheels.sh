#!/usr/bin/env bash
# Download the cp312 wheels a lent GPU machine lacks into .whl/ (git-ignored), for `device run --carry .whl`.
#
# The device image has jax/flax/optax/orbax/absl/pytest but none of the data stack; nothing can be fetched
# there, so the wheels travel with the working tree (about 14 MB). Versions follow requirements.txt.
# Pure-Python packages published only as sdists (promise, pySmartDL) are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -i "^$1==" requirements.txt | head -n1; }
BINARY=(
  "$(pin miditok)" "$(pin symusic)" "$(pin grain)" "$(pin array-record)" "$(pin tensorflow-datasets)"
  "$(pin ml-collections)" "$(pin importlib-resources)" "$(pin tensorboardX)"
  portpicker==1.6.0 platformdirs==4.14.8 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9
  tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2 docstring_parser==0.18.0
  googleapis-common-protos==1.76.0
)
SDIST_ONLY=(promise==2.3 pySmartDL==1.3.4)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${BINARY[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${SDIST_ONLY[@]}"
du -sh "$DEST"
