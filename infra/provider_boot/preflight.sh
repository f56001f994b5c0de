# ---- 1. preflight ----------------------------------------------------------------
preflight() {
  step 1 "preflight"
  if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (it is the VM's startup-script)"
  fi
  mkdir -p "$CONFIG_DIR" "$ROOT$PROVIDER_ROOT"
  chmod 755 "$CONFIG_DIR" "$ROOT$PROVIDER_ROOT"
  exec 9<"$CONFIG_DIR"
  flock -n 9 || die "another boot of this script is running (lock on $CONFIG_DIR)"
  HOLDS_LOCK=1
  # No stale marker: READY is written last, only by a boot that succeeded.
  rm -f "$READY"
  rm -rf "$STAGE" "$SRC_STAGE" "$SRC.old" "$SECRETS_DIR.old"

  SYSTEM_PYTHON=$(command -v python3) ||
    die "python3 not found; the provider VM needs a Debian 12 image (Python $PYTHON_MINOR)"
  local have
  have=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "cannot run $SYSTEM_PYTHON"
  if [ "$have" != "$PYTHON_MINOR" ]; then
    die "python3 is Python $have, but every Ray node runs Python $PYTHON_MINOR" \
      "(cluster/layout.py PYTHON_MINOR) and Ray refuses mixed minor versions;" \
      "use a Debian 12 image (python3 = 3.11) for the provider VM. Refusing to set up."
  fi
  info "python3 is Python $have ($SYSTEM_PYTHON)"
}

