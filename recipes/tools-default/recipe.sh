#!/usr/bin/env bash
# The default tool-calling model, made with Herd's own post-training workflow (issue 16):
#   synthetic tool-use dialogs (herd sdg tools) -> LoRA SFT (herd train sft) -> rejection sampling on held-in
#   prompts (herd train rejection-sample --verifier tool_call) -> a second SFT round -> evaluation (herd eval).
# Every step is a Herd command; no BFCL or HumanEval data is used for training or for choosing anything
# (the SDG requests are decontaminated against both, and the run fails if any overlap is found).
#
#   make tune-default                       # the whole recipe (2-core CPU: see MODEL_CARD.md for the times)
#   OUT=/tmp/td N_TRAIN=40 N_HELDIN=20 N_CHAT=10 EVAL_LIMIT=5 recipes/tools-default/recipe.sh   # a smoke run
#
# Outputs under $OUT: the data (*.jsonl with their summaries), sft1/ and sft2/ (herd train outputs: adapter/,
# merged/, metrics), eval-*/ (herd eval runs), recipe.log and timings.tsv (seconds per step).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=recipes/tools-default
PY=${PY:-.venv/bin/python}
HERD="$PY -m herd.cli"
OUT=${OUT:-runs/tools-default}
N_TRAIN=${N_TRAIN:-1600}      # tool dialogs attempted for round 1
N_HELDIN=${N_HELDIN:-400}     # held-in requests for rejection sampling (never in round 1's data)
N_CHAT=${N_CHAT:-240}         # plain instructions without tools (self-instruct), answered by the base model
N_HELDOUT=${N_HELDOUT:-120}   # held-out instructions for the plain-chat checks (never trained on)
EVAL_LIMIT=${EVAL_LIMIT:-}    # empty: full BFCL categories
SEED=${SEED:-0}
CATEGORIES=${CATEGORIES:-simple_python,multiple,parallel,parallel_multiple,irrelevance,live_simple,live_multiple,live_irrelevance}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/recipe.log") 2>&1

step() {  # step NAME COMMAND...: run it, log the command and its wall time
    local name=$1; shift
    echo "== $(date -u +%FT%TZ) $name: $*"
    local t0=$SECONDS
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$OUT/timings.tsv"
}

SDG_TOOLS=(sdg tools --tools $R/tools.json --stubs $R/stubs.py --requests template --request-templates $R/requests.json
           --tools-per-dialog 3 --no-tool-share 0.3 --unavailable-share 0.25 --keep-calls-without-answer
           --fail-on-contamination --json)

step catalog "$PY" $R/check_catalog.py
step sdg_train $HERD "${SDG_TOOLS[@]}" -n "$N_TRAIN" --seed "$SEED" --out "$OUT/tools_train.jsonl"
step sdg_heldin $HERD "${SDG_TOOLS[@]}" -n "$N_HELDIN" --seed "$((SEED + 1))" --out "$OUT/tools_heldin.jsonl" \
    --prompts-out "$OUT/heldin_prompts.jsonl"
step sdg_chat $HERD sdg instruct --seeds $R/seeds.jsonl -n "$N_CHAT" --seed "$SEED" --out "$OUT/chat.jsonl" --json
cat "$OUT/tools_train.jsonl" "$OUT/chat.jsonl" > "$OUT/round1.jsonl"
step sdg_heldout $HERD sdg instruct --seeds $R/seeds.jsonl -n "$N_HELDOUT" --seed "$((SEED + 7))" \
    --out "$OUT/chat_heldout.jsonl" --json
"$PY" $R/heldout.py "$OUT/chat_heldout.jsonl" "$OUT" --seed "$SEED"
echo '{"prompt": "What is the capital of France?", "answer": "Paris"}' > "$OUT/france.jsonl"

SFT=(train sft --lora-rank 16 --epochs 1 --max-seq-len 1024 --seed "$SEED" --json)
step sft1 $HERD "${SFT[@]}" --data "$OUT/round1.jsonl" --out "$OUT/sft1"

# round 2: the round-1 model answers the held-in requests 4 times; the answers whose calls (or whose lack of a
# call) match the request's are kept, and round 2 trains on round 1's data plus them
step rejection $HERD train rejection-sample --model "$OUT/sft1/merged" --data "$OUT/heldin_prompts.jsonl" \
    --verifier tool_call -n 4 --temperature 0.8 --min-score 1 --seed "$SEED" --out "$OUT/rejection.jsonl" --json
cat "$OUT/round1.jsonl" "$OUT/rejection.jsonl" > "$OUT/round2.jsonl"
step sft2 $HERD "${SFT[@]}" --data "$OUT/round2.jsonl" --out "$OUT/sft2"

LIMIT=(); [ -n "$EVAL_LIMIT" ] && LIMIT=(--limit "$EVAL_LIMIT")
for m in base:smollm2-135m-instruct sft1:$OUT/sft1/merged sft2:$OUT/sft2/merged; do
    name=${m%%:*} model=${m#*:}
    step "eval_$name" $HERD eval bfcl --model "$model" --categories "$CATEGORIES" "${LIMIT[@]}" \
        --out "$OUT/eval-$name" --json
    [ "$name" = sft1 ] && continue
    # plain chat: no tool called when none is needed, the base model's answers still likely, Paris still Paris
    step "chat_$name" $HERD eval generate --model "$model" --data "$OUT/chat_prompts.jsonl" --scorer no_tool_call \
        --temperature 0 --max-tokens 96 --out "$OUT/chat-$name" --json
    step "ppl_$name" $HERD eval perplexity --model "$model" --data "$OUT/chat_answers.jsonl" --out "$OUT/ppl-$name" \
        --json
    step "france_$name" $HERD eval generate --model "$model" --data "$OUT/france.jsonl" --scorer contains \
        --temperature 0 --max-tokens 24 --out "$OUT/france-$name" --json
done
echo "== done: $(awk '{s += $2} END {print s}' "$OUT/timings.tsv") s in all; $OUT/timings.tsv"
