#!/usr/bin/env bash
# Everything that needs a CUDA GPU, as one command for a machine lent for minutes: the CUDA
# paths' tests and step_speed on CUDA in float32 and bfloat16.
#
#     OUT=/some/dir bash benchmarks/gpu_checks.sh
#
# Runs on the machine's own CUDA build of torch with this checkout on PYTHONPATH (no virtual
# environment, no C++ extension build). Each part runs even if an earlier one fails; the
# results are packed into one archive, $OUT/gpu_checks.tgz, to unpack at the repository root.
set -uo pipefail
export PYTHONPATH=$PWD NORMCTL_NO_EXTENSION=1
out=${OUT:-.}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
status=0
python -m pytest -q -p no:cacheprovider tests/test_fused.py || status=1
python benchmarks/step_speed.py --device cuda || status=1
python benchmarks/step_speed.py --device cuda --dtype bfloat16 --family gpt2 || status=1
tar czf "$out/gpu_checks.tgz" results/bench/*_cuda.json || status=1
exit $status
