#!/usr/bin/env bash
# Train the five seed experiments (configs/exp_*.yaml) one after another, then write the report.
#
#   ./run_seed_experiments.sh --max_train_samples 2000 --num_train_epochs 1     # shared overrides
#   LAUNCH="accelerate launch --config_file accelerate_config.yaml" ./run_seed_experiments.sh
#
# Run i goes to $OUTPUT_ROOT/<config name> (default outputs/), the report to $OUTPUT_ROOT/report.
set -euo pipefail
cd "$(dirname "$0")"
root=${OUTPUT_ROOT:-outputs}
launch=${LAUNCH:-python}
runs=()
for config in configs/exp_*.yaml; do
  name=$(basename "$config" .yaml)
  $launch run_qa_lora.py "$config" --output_dir "$root/$name" "$@"
  runs+=("$root/$name")
done
python report.py "${runs[@]}" --output_dir "$root/report"
