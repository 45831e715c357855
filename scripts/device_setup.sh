# Source on the lent GPU machine, from the repo root:  . scripts/device_setup.sh
# Installs carried wheels (.whl/, built here by ../shared/device/wheels.sh) into /tmp/site and
# exposes this checkout as the `bitsweep` namespace package (bitsweep.harness, .methods,
# .kernels, .conf) through symlinks in /tmp/ns -- the GPU image has no setuptools>=69 to do an
# editable install offline. The bare folder names are never put on sys.path.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || return 1
fi
mkdir -p /tmp/ns/bitsweep
for d in harness methods kernels conf; do ln -sfn "$PWD/$d" "/tmp/ns/bitsweep/$d"; done
export PYTHONPATH="/tmp/ns:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
