#!/usr/bin/env bash
# Prepares a real dataset (raw frames/audio or mp4 clips -> TFDS ArrayRecord) that training and evaluation read.
#
#   bash launch/prepare_data.sh [options] <dataset> <config> <manual_dir> [<data_dir>]
#
#   <dataset>/<config>: music/{solo,duet}, vggsound/{single,duet}, vgginstruments/{single,multi}: 16 kHz audio
#                       (AVGN); the same with _44k (music/solo_44k, ...): 44.1 kHz audio (T-VSL)
#   <manual_dir>:       the raw files, in either official layout (per clip):
#                         frames/<id>.jpg + audio/<id>.wav   (MUSIC: audio/<ytid>.wav, one per video)
#                         <id>.mp4                           (decoded with PyAV: middle frame + audio track)
#                       VGGSound: also the train list vggsound_single_train.txt; VGGSound-Instruments: masks/.
#                       The official metadata files are bundled; a copy in <manual_dir>/metadata/ overrides them.
#                       `python -c "import avl_jax.datasets as d; print(d.vggsound.Vggsound.MANUAL_DOWNLOAD_INSTRUCTIONS)"`
#                       prints the exact instructions of a dataset.
#   <data_dir>:         TFDS data_dir (default: data/tfds). The dataset lands in <data_dir>/<dataset>/<config>/<version>/
#                       with skipped_<split>.csv (id, file, reason, detail) listing every skipped example.
#
# Options:
#   --set FIELD=VALUE   override a builder config field (avl_jax/datasets/builder_lib.py RawConfig), e.g.
#                       --set frame_short_side=246 --set audio_seconds=5 --set num_workers=8 --set splits=test
#   --max_missing_fraction F   fail when more than this fraction of a split is skipped (default 0.5)
#   --beam[=RUNNER]     run the same builder as an Apache Beam pipeline (default runner DirectRunner) in the
#                       Beam virtualenv (.venv-beam, created with avl_jax[beam,test] on first use; AVL_BEAM_VENV to change)
#   --beam_options "…"  Beam pipeline options, e.g. for Dataflow:
#                       --beam_options "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
#                                       --setup_file=./setup.py"   (manual_dir and data_dir on gs:// then)
#   --demo              ignore <manual_dir>'s content: write a small fake raw tree there first (smoke test)
#
# Local path: one process per core decodes (progress in the log); Beam path: Create | Reshuffle | decode | write,
# the same examples in the same order (tests/datasets_beam_test.py checks it).
# AVL_SKIP_INSTALL=1 uses the python on PATH as is (no virtualenv set-up).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() { sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

BEAM="" BEAM_OPTIONS="" DEMO=0 SETS=()
POSITIONAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage 0 ;;
    --beam) BEAM="DirectRunner"; shift ;;
    --beam=*) BEAM="${1#--beam=}"; shift ;;
    --beam_options) BEAM_OPTIONS="$2"; shift 2 ;;
    --beam_options=*) BEAM_OPTIONS="${1#--beam_options=}"; shift ;;
    --set) SETS+=("--set=$2"); shift 2 ;;
    --set=*) SETS+=("--set=${1#--set=}"); shift ;;
    --max_missing_fraction) SETS+=("--set=max_missing_fraction=$2"); shift 2 ;;
    --max_missing_fraction=*) SETS+=("--set=max_missing_fraction=${1#--max_missing_fraction=}"); shift ;;
    --demo) DEMO=1; shift ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
[ "${#POSITIONAL[@]}" -ge 3 ] && [ "${#POSITIONAL[@]}" -le 4 ] || usage
DATASET="${POSITIONAL[0]}" CONFIG="${POSITIONAL[1]}" MANUAL_DIR="${POSITIONAL[2]}"
DATA_DIR="${POSITIONAL[3]:-$REPO/data/tfds}"

if [ -n "$BEAM" ] || [ -n "$BEAM_OPTIONS" ]; then
  # apache-beam 2.77 pins protobuf<7, Pillow<13, pyarrow<26: it gets its own virtualenv.
  AVL_VENV="${AVL_BEAM_VENV:-$REPO/.venv-beam}" source "$REPO/launch/env.sh" beam,test
else
  source "$REPO/launch/env.sh" ""
fi
MANUAL_DIR="$(absolute "$MANUAL_DIR")" DATA_DIR="$(absolute "$DATA_DIR")"

if [ "$DEMO" = "1" ]; then
  echo "[avl_jax] writing a fake raw $DATASET/$CONFIG tree (mp4 layout) to $MANUAL_DIR"
  python -c "import sys; from avl_jax.datasets import fake_raw; fake_raw.make_tree(*sys.argv[1:])" \
    "$DATASET" "$CONFIG" "$MANUAL_DIR" video
  SETS+=("--set=frame_short_side=64")
  if [ "$DATASET" = "music" ]; then SETS+=("--set=audio_seconds=1"); fi  # the fake MUSIC videos last 3 s
fi

ARGS=("--dataset=$DATASET/$CONFIG" "--manual_dir=$MANUAL_DIR" "--data_dir=$DATA_DIR" "${SETS[@]+"${SETS[@]}"}")
if [ -n "$BEAM" ]; then ARGS+=("--beam_runner=$BEAM"); fi
if [ -n "$BEAM_OPTIONS" ]; then ARGS+=("--beam_options=$BEAM_OPTIONS"); fi
echo "[avl_jax] python -m avl_jax.datasets.build ${ARGS[*]}"
python -m avl_jax.datasets.build "${ARGS[@]}"
