#!/usr/bin/env bash
# README command 1: installs dependencies, builds moec (Release) and runs the
# main job on the bundled tiny Mixtral: calibrate on its training text,
# compress it three ways (expert pruning, expert merging, 4-bit GPTQ), check
# every result against the original on held-out text, print one table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOEC_SANITIZE=OFF -DMOEC_TESTS=OFF >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
bin=build/bin
model=models/mixtral-tiny
corpus=data/corpus
out=out/demo
mkdir -p "$out"
train=("$corpus"/drama.train.txt "$corpus"/scripture.train.txt "$corpus"/python.train.txt "$corpus"/c.train.txt)
val=(--text "$corpus"/drama.val.txt --text "$corpus"/scripture.val.txt --text "$corpus"/python.val.txt
     --text "$corpus"/c.val.txt --mc "$corpus"/mc.val.jsonl)

echo "== the model"
$bin/moec-inspect $model
echo
echo "== a sample (greedy)"
$bin/moec-run $model -p "def main(" -n 40 --temp 0
echo
echo "== calibrate: 32768 tokens of the four training texts"
$bin/moec-calib $model --text "${train[@]}" --tokens 32768 -o "$out/calib.stats" --force --quiet
echo "== prune: EASY-EP, 6 of 8 experts per layer"
$bin/moec-prune $model --method easyep --keep 6 --stats "$out/calib.stats" -o "$out/easyep-6" --force --quiet
echo "== merge: Sub-MoE clustering, fitted merge (moec-merge's default), 6 of 8 experts per layer"
$bin/moec-merge $model --method submoe --keep 6 "${train[@]/#/--text=}" --tokens 32768 -o "$out/submoe-6" --force --quiet
echo "== quantize: GPTQ, 4-bit experts, groups of 128"
$bin/moec-quant $model --bits 4 --group 128 --method gptq "${train[@]/#/--text=}" --tokens 32768 \
  -o "$out/gptq-4.moec" --force --quiet
echo "== quantize: mixed precision, 2.5 average expert bits from {1,2,3,4} chosen by MC-MoE's integer program (GLPK)"
$bin/moec-quant $model --bits 4 --group 64 --method gptq --avg-bits 2.5 --alloc mcmoe "${train[@]/#/--text=}" \
  --tokens 32768 -o "$out/mcmoe-2.5.moec" --force --quiet
echo "== evaluate each against the original (ctx 256, val text, multiple choice)"
$bin/moec-eval --model $model "${val[@]}" --json --quiet >"$out/original.json"
for m in easyep-6 submoe-6 gptq-4.moec mcmoe-2.5.moec; do
  $bin/moec-eval --model "$out/$m" --base $model "${val[@]}" --json --quiet >"$out/$m.json"
done
echo
size() { du -sb "$1" | cut -f1; }
{
  printf 'model\tMiB\tppl drama\tppl scripture\tppl python\tppl c\tKL\ttop-1\tmc acc\n'
  for m in original easyep-6 submoe-6 gptq-4.moec mcmoe-2.5.moec; do
    path=$out/$m; [ "$m" = original ] && path=$model
    jq -r --arg name "$m" --arg mib "$(awk -v b="$(size "$path")" 'BEGIN{printf "%.1f", b/1048576}')" '
      def pct: (. * 1000 | round) as $t | "\($t / 10 | floor).\($t % 10)%";
      [$name, $mib,
       (.files["drama.val.txt"].perplexity, .files["scripture.val.txt"].perplexity,
        .files["python.val.txt"].perplexity, .files["c.val.txt"].perplexity | . * 100 | round / 100),
       (if .kld_mean then (.kld_mean * 10000 | round / 10000) else "-" end),
       (if .top1_agreement then (.top1_agreement | pct) else "-" end),
       (.mc_acc | pct)] | @tsv' "$out/$m.json"
  done
} | column -t -s $'\t'
echo
echo "== speed of the original and the 4-bit model (2 threads)"
$bin/moec-bench $model --reps 3
$bin/moec-bench "$out/gptq-4.moec" --reps 3
