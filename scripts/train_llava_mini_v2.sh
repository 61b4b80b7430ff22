#!/usr/bin/env bash
# LLaVA-mini v2 from the committed v1 files (models/llava-mini): identity shaping of the projector, then four
# stage-1 runs of the LM LoRA with attention targets (why each: experiments/llava-mini-v2-identity.md §8).
#
#   bash scripts/train_llava_mini_v2.sh [OUT]        # OUT defaults to runs/llava-mini-v2
#
# Resumable: rerun after a stop; a finished stage (its exported projector exists) is skipped, a stopped one resumes
# from its last checkpoint. 2 CPU cores, fp32, about 1.5 h. The result is OUT/mixed/final/{projector,lm_lora}.safetensors
# (what models/llava-mini-v2 holds).
set -euo pipefail
OUT=${1:-runs/llava-mini-v2}
PLVM=${PLVM:-.venv/bin/plvm}
LORA=(--freeze-projector --lora-r 16 --lora-alpha 32 --threads 2 --mixed-precision no)
TWINS=(--image-prompt-pairs --same-portrait-share 0.5 --attention-match 8,0 --word-weight 10 --batch-size 4
  --save-every 25 --log-every 5)
KINDS=hair_color=2,glasses=2,age=2,count=1,clothing_color=1,clothing_type=1,expression=1,object=0.5,setting=0.5

stage() {  # NAME STEPS INIT_PROJECTOR TRAIN-BASE-FLAGS...: train, then export the last checkpoint to NAME/final
  local name=$1 steps=$2 init=$3
  shift 3
  if [ -f "$OUT/$name/final/projector.safetensors" ]; then
    echo "stage $name: done ($OUT/$name/final)"
    return
  fi
  "$PLVM" train-base --out "$OUT/$name" --init-projector "$init" --steps "$steps" "${LORA[@]}" "$@"
  mkdir -p "$OUT/$name/final"
  "$PLVM" export "$OUT/$name/checkpoint-$(printf %06d "$steps")" "$OUT/$name/final/projector.safetensors"
}

# stage 0: identity shaping of the widened v1 projector (600 steps on cached tower features); one stage-1 step at
# lr 1e-9 so that a checkpoint holds it
stage shaped 1 models/llava-mini/projector.safetensors --vision-feature-layer 8,-1 --shape-identity-steps 600 \
  --shape-identity-weight 0.3 --mix 0,0,0,1 --batch-size 2 --lr 1e-9 --warmup-steps 0 --save-every 1 --seed 3
# the compare target on head (8, 0), image-prompt twins only
stage compare 150 "$OUT/shaped/final/projector.safetensors" "${TWINS[@]}" --mix 0,0,0,1 --lr 5e-4 \
  --warmup-steps 20 --seed 11
# + the report target on head (20, 0)
stage report 400 "$OUT/compare/final/projector.safetensors" "${TWINS[@]}" --attention-report 20,0 --mix 0,0,0,1 \
  --lr 5e-4 --warmup-steps 20 --seed 12
# both targets, 60 % twins + 35 % 8-turn visual QA + 5 % captions
stage mixed 200 "$OUT/report/final/projector.safetensors" "${TWINS[@]}" --attention-report 20,0 \
  --mix 0.05,0.35,0,0.6 --turns 8 --vqa-kinds "$KINDS" --lr 3e-4 --warmup-steps 20 --seed 13
echo "LLaVA-mini v2: $OUT/mixed/final (copy projector.safetensors and lm_lora.safetensors to models/llava-mini-v2)"
