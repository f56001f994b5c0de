# ---- 9. autostop: stop the idle Ray cluster, then power this VM off ---------------
# A oneshot service (one check: cluster/autostop.py vm-check, with the venv's
# pinned Ray and the bundle's code) and a timer that runs it every minute,
# from 2 minutes after boot. Off (timer disabled) when the timeout is 0.
write_autostop_config() {
  local minutes=$1
  printf '{"cluster_yaml": "%s", "idle_timeout_minutes": %d, "ray": "%s", "secrets_dir": "%s", "state_dir": "%s"}\n' \
    "$CLUSTER_YAML" "$minutes" "$VENV/bin/ray" "$SECRETS_DIR" "$ROOT$AUTOSTOP_STATE_DIR"
}

write_autostop_service() {
  echo "# ray-gcp: one autostop check (ray-gcp:idleTimeoutMinutes); run by $AUTOSTOP_UNIT.timer."
  echo "# Written by the provider VM's boot script; see infra/BOOT.md and cluster/autostop_vm.py."
  echo "[Unit]"
  echo "Description=ray-gcp autostop: stop the idle Ray cluster (ray down), then power off this VM"
  echo "Documentation=file://$PROVIDER_SRC/cluster/autostop_vm.py"
  echo "Wants=network-online.target"
  echo "After=network-online.target google-startup-scripts.service"
  # A VM whose boot did not complete has no credentials to look at the head with.
  echo "ConditionPathExists=$READY"
  echo ""
  echo "[Service]"
  echo "Type=oneshot"
  echo "Environment=$AUTOSTOP_CONFIG_ENV=$AUTOSTOP_JSON"
  echo "Environment=HOME=$ROOT$AUTOSTOP_STATE_DIR"
  # -I: only the venv and the bundle on sys.path (never a working directory's);
  # -u: each line reaches the journal at once.
  echo "ExecStart=$VENV/bin/python -I -u -m cluster.autostop vm-check"
  echo "SyslogIdentifier=$AUTOSTOP_UNIT"
  # ray down waits for every VM of the cluster to be deleted.
  echo "TimeoutStartSec=45min"
}

write_autostop_timer() {
  echo "# ray-gcp: run $AUTOSTOP_UNIT.service every minute. Written by the boot script."
  echo "[Unit]"
  echo "Description=ray-gcp autostop: check every minute whether the Ray cluster is idle"
  echo ""
  echo "[Timer]"
  echo "OnBootSec=2min"
  echo "OnUnitInactiveSec=1min"
  echo "AccuracySec=5s"
  echo ""
  echo "[Install]"
  echo "WantedBy=timers.target"
}

write_idle_command() {
  echo '#!/bin/sh'
  echo "# ray-gcp-idle: the autostop state (status, the default) or the login banner (banner)."
  echo "# Written by the provider VM's boot script; see cluster/autostop.py."
  echo "[ \$# -gt 0 ] || set -- status"
  # -I: the bundle's cluster/, never one in the caller's working directory.
  echo "$AUTOSTOP_CONFIG_ENV=\"$AUTOSTOP_JSON\" exec \"$VENV/bin/python\" -I -m cluster.autostop \"\$@\""
}

install_autostop() {
  local minutes
  minutes=$(<"$STAGE/idle-timeout-minutes")
  step 9 "autostop ($([ "$minutes" = 0 ] && echo off || echo "after $minutes min idle"))"
  mkdir -p "$(dirname "$AUTOSTOP_JSON")" "$(dirname "$AUTOSTOP_SERVICE")" "$(dirname "$IDLE_COMMAND")"
  # The state is read by `ray-gcp-idle status` at every operator's login: 0755, no secrets.
  mkdir -p "$ROOT$AUTOSTOP_STATE_DIR"
  chmod 755 "$ROOT$AUTOSTOP_STATE_DIR"
  write_autostop_config "$minutes" >"$STAGE/autostop.json"
  install_file "$STAGE/autostop.json" 0644 "$AUTOSTOP_JSON"
  write_idle_command >"$STAGE/idle-command"
  install_file "$STAGE/idle-command" 0755 "$IDLE_COMMAND"
  local before=$FILES_WRITTEN
  write_autostop_service >"$STAGE/autostop.service"
  install_file "$STAGE/autostop.service" 0644 "$AUTOSTOP_SERVICE"
  write_autostop_timer >"$STAGE/autostop.timer"
  install_file "$STAGE/autostop.timer" 0644 "$AUTOSTOP_TIMER"
  if [ "$FILES_WRITTEN" != "$before" ]; then
    systemctl daemon-reload
  fi
  if [ "$minutes" = 0 ]; then
    if systemctl is-enabled --quiet "$AUTOSTOP_UNIT.timer" 2>/dev/null; then
      systemctl disable --now "$AUTOSTOP_UNIT.timer"
    fi
    info "autostop is off (idleTimeoutMinutes = 0): the cluster runs until stopped"
  else
    systemctl enable --now "$AUTOSTOP_UNIT.timer"
    info "after $minutes min idle: ray down, then this VM powers off; state: $IDLE_STATUS_COMMAND"
  fi
}

