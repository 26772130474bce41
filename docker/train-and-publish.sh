#!/bin/sh
# Train a model into a new run folder, then publish it by switching the `current` symlink in one atomic
# rename, so workers watching $MODELS_DIR/current never see a half-written model. Keeps the newest $KEEP runs.
#   logmoe-train-and-publish --config /etc/logmoe/train.yaml --data /data/train.jsonl [key=value ...]
set -eu
models="${MODELS_DIR:-/models}"
keep="${KEEP:-3}"
run="$models/runs/$(date -u +%Y%m%dT%H%M%S.%NZ)"  # sorts by time
mkdir -p "$models/runs"
logmoe train --output-dir "$run" "$@"
test -f "$run/final_moe_model/config.json" || { echo "no model in $run/final_moe_model" >&2; exit 1; }
ln -sfn "$run/final_moe_model" "$models/.current.tmp"
mv -T "$models/.current.tmp" "$models/current"
echo "published $run/final_moe_model as $models/current"
ls -1d "$models"/runs/*/ | sort | head -n "-$keep" | while read -r old; do rm -rf "$old"; done
