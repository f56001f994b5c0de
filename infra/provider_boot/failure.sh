# ---- logging and failure ---------------------------------------------------------
step() {
  STEP=$2
  echo "$TAG: [$1/10] $2"
}

info() {
  echo "$TAG:   $*"
}

die() {
  FAIL_REASON=$*
  exit 1
}

on_error() {
  # Unexpected command failure (set -e): name the command; it holds no secrets.
  [ -n "$FAIL_REASON" ] || FAIL_REASON="command failed (line $1): $2"
}

on_exit() {
  local rc=$?
  [ "$HOLDS_LOCK" = 1 ] || { [ "$rc" = 0 ] || report_failure "$rc"; return; }
  # Interrupted between the two renames of a swap: put the previous tree back.
  if [ -e "$SRC.old" ] && [ ! -e "$SRC" ]; then mv "$SRC.old" "$SRC"; fi
  rm -rf "$STAGE" "$SRC_STAGE" "$SRC.old" "$SECRETS_DIR.old"
  if [ "$rc" != 0 ]; then
    # Fail closed: no READY marker and no credentials until a boot succeeds,
    # so a revoked or deleted secret version stops working at the next boot.
    rm -rf "$SECRETS_DIR" "$READY"
    report_failure "$rc"
  fi
}

report_failure() {
  local line
  line="FAILED in step '$STEP' (exit $1): ${FAIL_REASON:-see the messages above}"
  line+=" -- this VM is NOT ready: $READY is absent and no credentials are installed."
  line+=" Fix the cause, then rerun: sudo google_metadata_script_runner startup"
  echo "$TAG: $line" >&2
  logger -p user.err -t "$TAG" -- "$line" 2>/dev/null || true
}

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT

