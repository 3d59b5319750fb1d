#!/usr/bin/env bash
# The sweeps behind the committed leaderboards/ (the CPU recipes on the built-in shapes data), then the
# leaderboard. Overrides given to this script apply to every sweep, so one command runs the whole board:
#   bash leaderboards/sweeps.sh                                        # here, one job after another
#   bash leaderboards/sweeps.sh launcher=local launcher.jobs=2         # here, 2 jobs at a time
#   bash leaderboards/sweeps.sh launcher=slurm launcher.partition=gpu launcher.wait=true   # one SLURM job per run
# Finished jobs are skipped (their config hash and seed have a success record), so an interrupted run of
# this script is finished by running it again.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
SWEEPS=(
  "task=classification op=conv,dwconv,octconv,ddf,scconv,sru,cru seed=0,1,2"
  "task=classification recipe=standard op=conv,ddf,dwconv,octconv,scconv,sru,cru seed=0,1,2"
  "task=classification recipe=standard op=ddf op_kwargs.branches=spatial,channel seed=0,1,2"
  "task=classification recipe=standard op=ddf op_kwargs.filter_norm=sigmoid seed=0,1,2"
  "task=classification recipe=standard op=ddf op_kwargs.spatial_mean=true seed=0,1,2"
  "task=classification recipe=standard op=octconv op_kwargs.alpha=0.125,0.25,0.75 seed=0,1"
  "task=classification recipe=standard op=sru op_kwargs.conv=true seed=0,1"
  "task=detection op=conv,ddf upsampler=nearest,carafe,ddf_up"
  "task=detection detector=thundernet backbone=snet146 op=conv,dwconv,ddf"
  "task=detection detector=light_head_rcnn op=conv,ddf"
  "task=segmentation op=conv,dwconv,octconv,ddf,scconv,sru,cru seed=0,1,2"
  "task=segmentation upsampler=bilinear,carafe,ddf_up"
  "task=segmentation model=dfanet op=conv,dwconv"
  "task=depth upsampler=deconv,pixel_shuffle,pac,ddf_up,carafe seed=0,1,2"
  "task=depth upsampler=ddf_up guide=none seed=0,1,2"
  "task=depth scale=8 recipe=quick_x8 upsampler=deconv,pixel_shuffle,pac,ddf_up,carafe seed=0,1,2"
  "task=depth scale=8 recipe=quick_x8 upsampler=ddf_up guide=none seed=0,1,2"
  "task=depth model=interpolate upsampler=bilinear,jbu"
  "task=depth model=interpolate upsampler=bilinear,jbu scale=8 recipe=quick_x8"
  "task=saliency seed=0,1,2"
  "task=saliency recipe.dynamic_weight_decay=0 seed=0,1,2"
  "task=saliency prune=true seed=0,1,2"
  "task=saliency upsampler=carafe,ddf_up seed=0"
  "task=saliency model=csf op=conv,dwconv,octconv seed=0"
  "task=saliency recipe.epochs=4 seed=0"
)
for sweep in "${SWEEPS[@]}"; do
  # shellcheck disable=SC2086  # each sweep is a list of overrides
  "$BENCH" run -m $sweep "$@"
done
"$BENCH" leaderboard
