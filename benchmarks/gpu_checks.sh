#!/usr/bin/env bash
# Everything that needs a CUDA GPU, as one command for a machine lent for minutes (about 8 on an
# H100/H200): the CUDA paths' tests, step_speed on CUDA in float32 and bfloat16, and the
# Voronoi grid's widest runs (width 2048, 16x a baseline run: about 50 min each on 2 CPU cores)
# and whatever else of its grid has not run.
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
python -m normctl.cli repro-voronoi --out results/repro_voronoi --scale paper --device cuda --workers 14 || status=1
tar czf "$out/gpu_checks.tgz" --exclude=checkpoint.pt --exclude=request.json \
    results/bench/*_cuda.json results/repro_voronoi/hidden-2048_s* \
    results/repro_voronoi/summary.json results/repro_voronoi/report.html || status=1
exit $status
