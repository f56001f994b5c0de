# ---- 8. cluster config, operator access, login environment ---------------------
write_helper() {
  # Runs as root through sudo. It never writes into the operator's home as
  # root: the operator's own process (runuser) writes the copies, so a
  # symlink planted there cannot redirect a root write.
  echo '#!/bin/bash'
  echo "# ray-gcp: installs the calling operator's own 0600 copies of the launcher"
  echo "# credentials. Written by the provider VM's boot script; see infra/BOOT.md."
  echo "# Usage: sudo $OPERATOR_HELPER   (root may name a USER: $OPERATOR_HELPER USER)"
  printf 'SECRETS_DIR=%q\nREADY=%q\nOPERATOR_DIR=%q\n' "$SECRETS_DIR" "$READY" "$OPERATOR_DIR"
  printf 'OPERATORS_FILE=%q\nOPERATOR_GROUP=%q\n' "$OPERATORS_FILE" "$OPERATOR_GROUP"
  printf 'COPIES=(%q %q %q %q %q %q)\n' \
    "$SECRET_SSH_PRIVATE_KEY" "$OPERATOR_SSH_KEY" "$SECRET_RAY_AUTH_TOKEN" "$OPERATOR_AUTH_TOKEN" \
    "$SECRET_SA_KEY" "$OPERATOR_SA_KEY"
  cat <<'HELPER'
set -euo pipefail
umask 077
fail() { echo "ray-gcp-operator-credentials: $*" >&2; exit 1; }
user=${1:-${SUDO_USER:-}}
[ -n "$user" ] || fail "run it through sudo, or as root name the operator: $0 USER"
[ -e "$READY" ] || fail "this VM's boot has not completed, so there are no credentials (sudo journalctl -u google-startup-scripts)"
entry=$(getent passwd "$user") || fail "unknown user '$user'"
home=$(printf '%s\n' "$entry" | cut -d: -f6)
[ -d "$home" ] || fail "the home directory of '$user' ($home) does not exist"
# A user listed in ray-gcp:operators joins the group now that OS Login knows them.
if [ -f "$OPERATORS_FILE" ] && grep -qxF -- "$user" "$OPERATORS_FILE"; then
  gpasswd -a "$user" "$OPERATOR_GROUP" >/dev/null
fi
for ((i = 0; i < ${#COPIES[@]}; i += 2)); do
  name=${COPIES[i]}
  dest=$home/${COPIES[i + 1]}
  if [ -f "$SECRETS_DIR/$name" ]; then
    [ -r "$SECRETS_DIR/$name" ] || fail "cannot read $SECRETS_DIR/$name; run it through sudo"
    # shellcheck disable=SC2016  # expanded by the operator's shell
    runuser -u "$user" -- /bin/sh -c 'umask 077 && mkdir -p "$1" && chmod 700 "$1" &&
      tmp=$(mktemp "$1/.incoming.XXXXXX") && cat >"$tmp" && mv -f "$tmp" "$2"' \
      sh "$home/$OPERATOR_DIR" "$dest" <"$SECRETS_DIR/$name"
  else
    # Not in this credential mode (e.g. no service-account key): drop stale copies.
    runuser -u "$user" -- rm -f "$dest"
  fi
done
echo "ray-gcp: launcher credentials installed for $user in $home/$OPERATOR_DIR" >&2
HELPER
}

write_sudoers() {
  echo "# ray-gcp: members of $OPERATOR_GROUP and the users listed in ray-gcp:operators may"
  echo "# install their own copies of the launcher credentials, nothing else (no arguments)."
  echo "# Written by the provider VM's boot script."
  echo "%$OPERATOR_GROUP ALL=(root) NOPASSWD: $HELPER \"\""
  local users
  users=$(paste -sd, "$STAGE/operators")
  if [ -n "$users" ]; then
    echo "${users//,/, } ALL=(root) NOPASSWD: $HELPER \"\""
  fi
}

write_profile() {
  echo "# ray-gcp: login environment for operators on the provider VM."
  echo "# Written by the provider VM's boot script on every boot; see infra/BOOT.md."
  echo "case \":\$PATH:\" in *\":$VENV/bin:\"*) ;; *) PATH=\"$VENV/bin:\$PATH\" ;; esac"
  echo "export PATH"
  echo "export RAY_GCP_CLUSTER_YAML=\"$CLUSTER_YAML\""
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=\"\$HOME/$OPERATOR_AUTH_TOKEN\""
  if [ "$CREDENTIAL_MODE" = key ]; then
    echo "export GOOGLE_APPLICATION_CREDENTIALS=\"\$HOME/$OPERATOR_SA_KEY\""
  fi
  echo "if [ ! -e \"$READY\" ]; then"
  echo "  echo \"ray-gcp: this VM's boot did not complete; no launcher credentials.\" \\"
  echo "    \"See: sudo journalctl -u google-startup-scripts\" >&2"
  echo "else"
  # Members of the group, and listed operators (the helper adds them to the group).
  echo "  case \" \$(id -nG 2>/dev/null) \" in"
  echo "  *\" $OPERATOR_GROUP \"*) _ray_gcp_operator=1 ;;"
  echo "  *) grep -qxF -- \"\$(id -un)\" \"$OPERATORS_FILE\" 2>/dev/null && _ray_gcp_operator=1 ;;"
  echo "  esac"
  echo "  if [ -n \"\${_ray_gcp_operator:-}\" ]; then"
  echo "    sudo -n \"$HELPER\" 2>/dev/null ||"
  echo "      echo \"ray-gcp: could not install your launcher credentials: sudo $HELPER\" >&2"
  echo "  fi"
  echo "  unset _ray_gcp_operator"
  # How long the cluster has been idle and when it stops (ray-gcp:idleTimeoutMinutes).
  echo "  \"$IDLE_COMMAND\" banner >&2 2>/dev/null || true"
  echo "fi"
}

install_config() {
  step 8 "cluster config, operator access, login environment"
  install_file "$STAGE/cluster.yaml" 0644 "$CLUSTER_YAML"
  install_file "$STAGE/operators" 0644 "$OPERATORS_FILE"
  if ! getent group "$OPERATOR_GROUP" >/dev/null; then
    groupadd --system "$OPERATOR_GROUP"
    info "created group $OPERATOR_GROUP"
  fi
  mkdir -p "$(dirname "$HELPER")" "$(dirname "$SUDOERS")" "$(dirname "$PROFILE")"
  write_helper >"$STAGE/helper"
  install_file "$STAGE/helper" 0755 "$HELPER"
  write_sudoers >"$STAGE/sudoers"
  visudo -c -q -f "$STAGE/sudoers" || die "visudo rejects the generated sudoers rule"
  install_file "$STAGE/sudoers" 0440 "$SUDOERS"
  write_profile >"$STAGE/profile"
  install_file "$STAGE/profile" 0644 "$PROFILE"
}

