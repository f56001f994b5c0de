# ---- 3. system packages ----------------------------------------------------------
install_system_packages() {
  step 3 "system packages (${SYSTEM_PACKAGES[*]})"
  local missing=() pkg status
  # shellcheck disable=SC2016  # dpkg-query's own ${...} format syntax
  status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${SYSTEM_PACKAGES[@]}" 2>/dev/null) || true
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    grep -qx "$pkg installed" <<<"$status" || missing+=("$pkg")
  done
  if [ ${#missing[@]} = 0 ]; then
    info "already installed"
    return
  fi
  info "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # At first boot unattended-upgrades may hold the dpkg lock: wait for it.
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -q)
  "${apt[@]}" update
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

# ---- 4. uv, pinned ---------------------------------------------------------------
uv_version() {
  "$UV" --version 2>/dev/null | awk '{print $2}'
}

install_uv() {
  step 4 "uv $UV_VERSION"
  if [ -x "$UV" ] && [ "$(uv_version)" = "$UV_VERSION" ]; then
    info "already installed"
    return
  fi
  local pins=$SRC_STAGE/src/$UV_REQUIREMENTS
  [ -f "$pins" ] || die "the bundle lacks $UV_REQUIREMENTS (uv pinned by hash)"
  grep -qxF "uv==$UV_VERSION \\" "$pins" || die "$UV_REQUIREMENTS does not pin uv==$UV_VERSION"
  rm -rf "$TOOLS"
  "$SYSTEM_PYTHON" -m venv "$TOOLS"
  # The wheel must match one of the checked-in hashes (PyPI's Linux wheels).
  "$TOOLS/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check --no-deps \
    --require-hashes -r "$pins"
  [ "$(uv_version)" = "$UV_VERSION" ] || die "$UV reports version '$(uv_version)', wanted $UV_VERSION"
}

# ---- 5. the venv: exactly the nodes' pinned requirements -----------------------
# Prints "<python minor> <ray version or none>" of the venv; fails if there is no venv.
venv_state() {
  "$VENV/bin/python" -c '
import importlib.metadata as m, sys
try:
    ray = m.version("ray")
except m.PackageNotFoundError:
    ray = "none"
print("%d.%d" % sys.version_info[:2], ray)' 2>/dev/null
}

install_venv() {
  step 5 "venv $PROVIDER_VENV (ray $RAY_VERSION, Python $PYTHON_MINOR)"
  local requirements=$SRC_STAGE/src/$BUNDLE_REQUIREMENTS want
  # The marker records which requirements file the venv was synced to.
  want="requirements-sha256=$(sha256sum "$requirements" | cut -d' ' -f1) python=$PYTHON_MINOR"
  local state
  state=$(venv_state) || state=
  if [ -f "$VENV_MARKER" ] && [ "$(<"$VENV_MARKER")" = "$want" ] &&
    [ "$state" = "$PYTHON_MINOR $RAY_VERSION" ]; then
    info "already has exactly the pinned requirements"
    return
  fi
  rm -f "$VENV_MARKER"
  export UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 UV_NO_CACHE=1
  if [ "${state% *}" != "$PYTHON_MINOR" ]; then
    rm -rf "$VENV"
    "$UV" venv --no-project --python "$SYSTEM_PYTHON" "$VENV"
  fi
  local hashes=()
  if grep -q -- '--hash=' "$requirements"; then
    hashes=(--require-hashes)
  fi
  info "installing $BUNDLE_REQUIREMENTS with uv pip sync"
  "$UV" pip sync "${hashes[@]}" --python "$VENV/bin/python" "$requirements"
  state=$(venv_state) || state=
  [ "$state" = "$PYTHON_MINOR $RAY_VERSION" ] ||
    die "after the install the venv has (python, ray) '${state:-<no venv>}', wanted '$PYTHON_MINOR $RAY_VERSION'"
  printf '%s\n' "$want" >"$VENV_MARKER"
}

