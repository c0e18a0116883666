#!/bin/bash
# after the ResNet tuning: SGD at its selected configuration with a constant lr — the tail rise
# such a run shows is the statistic's noise floor (no schedule, so no end-of-training rise)
cd /work/main
while pgrep -f "tune_rest.sh" > /dev/null; do sleep 20; done
test -f results/tune_resnet/summary.json || exit 1
sets=$(.venv/bin/python -c "
import json; s = json.load(open('results/tune_resnet/summary.json'))['methods']['sgd']['knobs']
print(' '.join(f'--set {k}={v}' for k, v in s.items()))")
.venv/bin/normctl-lab sweep results/tune_resnet/base.json --set method=sgd --set schedule=constant \
  --set selection_split=0.05 $sets --grid schedule=constant --seeds 0,1,2 --out results/tune_resnet/constant_lr --workers 2
