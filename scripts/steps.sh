# Sourced by scripts/test.sh and scripts/check.sh: `step NAME` starts a timed
# step; at exit, however the script ends, a table of every step and its
# seconds is printed, the failed one marked.
STEP_NAMES=()
STEP_SECONDS=()
STEP_STARTED=0
step() {
  local now
  now=$(date +%s)
  if [ ${#STEP_NAMES[@]} -gt 0 ]; then
    STEP_SECONDS+=($((now - STEP_STARTED)))
  fi
  STEP_NAMES+=("$*")
  STEP_STARTED=$now
  printf '\n== %s\n' "$*"
}
STEPS_DONE=0
done_steps() {
  STEPS_DONE=1
}
print_steps() {
  local rc=$? now total=0 i status
  now=$(date +%s)
  if [ ${#STEP_NAMES[@]} -gt ${#STEP_SECONDS[@]} ]; then
    STEP_SECONDS+=($((now - STEP_STARTED)))
  fi
  printf '\n%-8s  %7s  %s\n' "result" "seconds" "step"
  for i in "${!STEP_NAMES[@]}"; do
    status=ok
    if [ "$STEPS_DONE" != 1 ] && [ "$i" = $((${#STEP_NAMES[@]} - 1)) ]; then
      status=FAILED
    fi
    total=$((total + STEP_SECONDS[i]))
    printf '%-8s  %7s  %s\n' "$status" "${STEP_SECONDS[i]}" "${STEP_NAMES[i]:0:100}"
  done
  printf '%-8s  %7s  %s\n' "" "$total" "in all"
  return $rc
}
trap print_steps EXIT
