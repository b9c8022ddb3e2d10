#!/usr/bin/env bash
# The airbench line on imgclf's split of the JPEG CIFAR-10 copy, on a CUDA GPU with PyTorch
# (issue 26; benchmarks/airbench_jpeg.py says why). Run from the repository root with, in
# .airbench/ (ignored by git): the pack that `airbench_jpeg.py pack` wrote here
# (cifar10_jpeg_split.npz), and the scripts of KellerJordan/cifar10-airbench at commit f1c599c:
# airbench94_muon.py, airbench96_faster.py, and legacy/airbench95.py and legacy/airbench96.py.
#
#     bash benchmarks/airbench_device.sh OUT_DIR [RUNS [STEP...]]    # STEP: e.g. airbench96_faster
#
# Each script's log goes to OUT_DIR. Changed by sed, nothing else: the number of runs (RUNS, 5;
# 2 for the airbench96 pair, 3 for the last two), airbench95's epochs (12: the training compute
# that 2 x T14 holds for fast-large's network, the same as airbench95's, on 40,000 images; its
# own 15; and 24), airbench96's (its own 37, and 8: 2 x T14's compute for its network), and
# torch.compile(mode="max-autotune") on the whole model left out (minutes of autotuning for
# speed, which is not measured here; airbench96_faster's `model._orig_mod`, the compiled
# model's own, made `model` to match). Each step has a time limit, so that one slow step cannot
# take the others' time.
set -uo pipefail
out=$(realpath "${1:?OUT_DIR}")
runs=${2:-5}
only=" ${*:3} "
mkdir -p "$out"
cd "$(dirname "$0")/../.airbench"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$out/machine.txt"
python3 ../benchmarks/airbench_jpeg.py unpack cifar10_jpeg_split.npz cifar10 2>&1 | tee "$out/unpack.log"

variant() {  # SCRIPT NAME RUNS [SED EXPRESSION...]: a copy of SCRIPT with its runs (and more) changed
    local script=$1 name=$2_run n=$3
    shift 3
    sed -e "s/for run in range([0-9]*)/for run in range($n)/" \
        -e 's/^\( *\)model.compile(mode="max-autotune")/\1pass/' \
        -e "s/torch.compile(\(model_[a-z]*\), mode='max-autotune')/\1/" -e 's/\._orig_mod\[0\]/[0]/' "$@" "$script" > "$name.py"
}
step() {  # SECONDS NAME: run NAME_run.py under a time limit, its log in OUT_DIR
    [[ "$only" == "  " || "$only" == *" $2 "* ]] || return 0
    echo "== $2 ($(date -u +%T))"
    PYTHONUNBUFFERED=1 timeout "$1" python3 "$2_run.py" > "$out/$2.log" 2>&1
    echo "rc $? after $SECONDS s in all"; grep -E "Mean|Error|error" "$out/$2.log" | tail -3
}

variant airbench95.py airbench95_e12 "$runs" -e "s/'train_epochs': 15,/'train_epochs': 12,/"
variant airbench95.py airbench95_e15 "$runs"
variant airbench94_muon.py airbench94_muon "$runs"
variant airbench96_faster.py airbench96_faster 2
variant airbench96.py airbench96 2
variant airbench95.py airbench95_e24 3 -e "s/'train_epochs': 15,/'train_epochs': 24,/"
variant airbench96.py airbench96_e8 3 -e "s/'train_epochs': 37.0,/'train_epochs': 8.0,/"
step 90 airbench95_e12
step 100 airbench95_e15
step 100 airbench94_muon
step 150 airbench96_faster
step 150 airbench96
step 100 airbench95_e24
step 100 airbench96_e8
