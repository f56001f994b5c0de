# ---- 6. the bundle: cluster/ and workloads/ on the venv's sys.path -------------
# Installs $1 as $3 with mode $2, only when content or mode differ (keeps mtimes).
install_file() {
  local src=$1 mode=$2 dest=$3
  if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" &&
    [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    return
  fi
  install -m "$mode" "$src" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
  FILES_WRITTEN=$((FILES_WRITTEN + 1))
  info "wrote $dest"
}

install_src() {
  step 6 "bundle -> $PROVIDER_SRC"
  local want
  want=$(<"$STAGE/bundle.sha256")
  if [ -f "$SRC_MARKER" ] && [ "$(<"$SRC_MARKER")" = "$want" ]; then
    info "unchanged"
  else
    printf '%s\n' "$want" >"$SRC_STAGE/src/.ray-gcp-bundle.sha256"
    if [ -e "$SRC" ]; then mv "$SRC" "$SRC.old"; fi
    mv "$SRC_STAGE/src" "$SRC"
    rm -rf "$SRC.old"
    info "unpacked"
  fi
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  printf '%s\n' "$SRC" >"$STAGE/ray-gcp-src.pth"
  install_file "$STAGE/ray-gcp-src.pth" 0644 "$site/ray-gcp-src.pth"
}

# ---- 7. secrets: root-owned 0600 master copies, swapped in atomically ----------
secrets_unchanged() {
  [ -d "$SECRETS_DIR" ] && [ "$(stat -c %a "$SECRETS_DIR")" = 700 ] &&
    diff -r -q "$STAGE/secrets" "$SECRETS_DIR" >/dev/null 2>&1 &&
    [ -z "$(find "$SECRETS_DIR" -mindepth 1 \( ! -type f -o ! -perm 600 \) -print -quit)" ]
}

install_secrets() {
  step 7 "secrets -> $PROVIDER_SECRETS_DIR"
  if secrets_unchanged; then
    info "unchanged"
    return
  fi
  if [ -e "$SECRETS_DIR" ]; then mv "$SECRETS_DIR" "$SECRETS_DIR.old"; fi
  mv "$STAGE/secrets" "$SECRETS_DIR"
  rm -rf "$SECRETS_DIR.old"
  info "installed $(find "$SECRETS_DIR" -type f -printf '%f ')"
}

