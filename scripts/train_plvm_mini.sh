#!/usr/bin/env bash
# The mini Aligner (PLVM-mini) on the committed LLaVA-mini (v2): three `plvm train` runs, then export
# (why each: experiments/aligner-v2-base.md).
#
#   bash scripts/train_plvm_mini.sh [OUT]        # OUT defaults to runs/plvm-mini
#
# Resumable: rerun after a stop; a finished stage (its last checkpoint exists) is skipped, a stopped one resumes
# from its last checkpoint. 2 CPU cores, fp32, about 15 min. The result is OUT/aligner.safetensors (what
# models/plvm-mini/aligner.safetensors holds).
set -euo pipefail
OUT=${1:-runs/plvm-mini}
PLVM=${PLVM:-.venv/bin/plvm}
COMMON=(--preset mini --data avatarworld --word-weight 10 --threads 2 --mixed-precision no)

stage() {  # NAME STEPS PLVM-TRAIN-FLAGS...: train NAME for STEPS steps unless its last checkpoint exists
  local name=$1 steps=$2
  shift 2
  if [ -d "$OUT/$name/checkpoint-$(printf %06d "$steps")" ]; then
    echo "stage $name: done ($OUT/$name)"
    return
  fi
  "$PLVM" train "${COMMON[@]}" --out "$OUT/$name" --steps "$steps" "$@"
}

# head anchoring: the context tokens are fitted to the base's pooled 4 x 4 head tokens of 600 training references;
# one Eq. 2 step at lr 1e-9 so that a checkpoint holds them
stage anchor 1 --head-anchor-references 600 --head-anchor-steps 600 --lr 1e-9 --warmup-steps 0 --save-every 1 \
  --seed 0
# Eq. 2 (w 10, p 0.6, recognition : attribute QA 1 : 1) on f_word and f_weight only; the context stays anchored
stage rows 200 --init-aligner "$OUT/anchor/checkpoint-000001" --freeze-context --lr 3e-4 --warmup-steps 10 \
  --save-every 50 --seed 0
# the zero point: Eq. 2 with p 0.5 on identities of another AvatarWorld (seed 1) that no stage has seen, so that
# "Yes" / "No" at log-odds 0 holds for new people, not for the memorised training identities; half of its
# recognition queries are one-person portraits, so that it holds for them as well as for scenes
stage zero 60 --init-aligner "$OUT/rows/checkpoint-000200" --freeze-context --world-seed 1 --positive-ratio 0.5 \
  --portrait-query-share 0.5 --lr 1e-4 --warmup-steps 5 --save-every 30 --seed 1
"$PLVM" export "$OUT/zero/checkpoint-000060" "$OUT/aligner.safetensors"
echo "PLVM-mini: $OUT/aligner.safetensors (copy to models/plvm-mini/aligner.safetensors)"
