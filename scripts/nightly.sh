#!/usr/bin/env bash
# `make nightly`: convert + verify the manifest, sign what passed, publish it to a store.
#
# ONLINE=1 (the scheduled workflow): every entry of $MANIFEST with its pinned checkpoint
#   (--require-lock: an entry the publisher pins by 8 hex digits only must be in
#   manifests/checkpoints.lock, recorded with `pipeline.py lock-checkpoints`)
#   (checkpoint cache, else download), with the accuracy gate on $DATA (labelled ImageNet val;
#   $LIMIT images spread over the classes on small machines) if given, the $PRECISIONS
#   variants (fp16, int8) if asked, signed with
#   $SIGNING_KEY and published after verification with $PUBLIC_KEY. EXECUTOR=ray (with
#   RAY_ADDRESS for a cluster) fans the work out over Ray.
# Both modes skip an entry whose latest version in $STORE was made from the same inputs
#   (--skip-unchanged reads the store's index), so a nightly with nothing changed takes
#   seconds. $STORE is a folder or s3://BUCKET/PREFIX (credentials and endpoint from the AWS
#   variables; release/store.py); a store that cannot be used stops the run before any work.
# Otherwise (default; this project's machines reach no checkpoint host): `make demo`, i.e.
#   the demo checkpoints of each source (random init, not trained weights) signed with the
#   demo key, and it says so.
# Exit status: that of the conversion run (1 if an entry failed), after publishing what passed;
# 1 if publishing refused an artifact.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${VENV_ROOT:-$PWD/.venvs}/orchestrator/bin/python"
OUT=${OUT:-nightly-artifacts}
STORE=${STORE:-store}
MANIFEST=${MANIFEST:-manifests/all.yaml}

if [ "${ONLINE:-0}" = 1 ]; then
  : "${SIGNING_KEY:?ONLINE=1 needs SIGNING_KEY (EC private key, PEM)}"
  : "${PUBLIC_KEY:?ONLINE=1 needs PUBLIC_KEY (the public half of SIGNING_KEY)}"
  echo "nightly: $MANIFEST with pinned checkpoints -> $OUT, signed, published to $STORE"
  "$PY" pipeline.py --manifest "$MANIFEST" --out "$OUT" --signing-key "$SIGNING_KEY" \
      ${DATA:+--data "$DATA"} ${LIMIT:+--limit "$LIMIT"} ${PRECISIONS:+--precisions "$PRECISIONS"} \
      ${EXECUTOR:+--executor "$EXECUTOR"} ${SHARD_SIZE:+--shard-size "$SHARD_SIZE"} \
      --skip-unchanged "$STORE" --require-lock
  run=$?
else
  echo "nightly (offline): no checkpoint host is reachable from here, so this converts the"
  echo "  DEMO checkpoints (random init, not trained weights) and signs with the DEMO key."
  echo "  Set ONLINE=1 SIGNING_KEY=... PUBLIC_KEY=... for the real job."
  make --no-print-directory demo OUT="$OUT" SKIP_UNCHANGED="$STORE" DEMO_DIR="${DEMO_DIR:-demo}"
  run=$?
  PUBLIC_KEY="${DEMO_DIR:-demo}/signing-key.pub"
fi

"$PY" pipeline.py publish --from "$OUT" --to "$STORE" --public-key "$PUBLIC_KEY" \
    ${KEEP:+--keep "$KEEP"}
published=$?
echo "nightly: conversion exit $run, publish exit $published; index: $STORE/index.md"
[ "$published" -ne 0 ] && exit "$published"
exit "$run"
