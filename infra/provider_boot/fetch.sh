# ---- 2. fetch everything into staging dirs -------------------------------------
fetch_all() {
  _RG_STAGE=$STAGE _RG_SRC_STAGE=$SRC_STAGE \
  _RG_METADATA_HOST=$METADATA_HOST _RG_SECRETMANAGER_ENDPOINT=$SECRETMANAGER_ENDPOINT \
  _RG_RETRY_BASE_DELAY=$RETRY_BASE_DELAY _RG_RAY_VERSION=$RAY_VERSION \
  _RG_META_CLUSTER_CONFIG=$META_CLUSTER_CONFIG _RG_META_BUNDLE=$META_BUNDLE \
  _RG_META_SECRETS=$META_SECRETS _RG_META_CREDENTIAL_MODE=$META_CREDENTIAL_MODE \
  _RG_META_OPERATORS=$META_OPERATORS _RG_META_IDLE_TIMEOUT=$META_IDLE_TIMEOUT \
  _RG_SECRET_SSH_PRIVATE_KEY=$SECRET_SSH_PRIVATE_KEY \
  _RG_SECRET_RAY_AUTH_TOKEN=$SECRET_RAY_AUTH_TOKEN _RG_SECRET_SA_KEY=$SECRET_SA_KEY \
  _RG_BUNDLE_REQUIREMENTS=$BUNDLE_REQUIREMENTS \
    "$SYSTEM_PYTHON" - <<'PY'
@@include fetch_staging.py@@
PY
}

fetch() {
  step 2 "fetch metadata, bundle and secrets into staging"
  mkdir -m 700 "$STAGE" "$SRC_STAGE"
  local error
  # The fetcher's progress goes to stdout (fd 3); its one-line error becomes the reason.
  exec 3>&1
  if ! error=$(fetch_all 2>&1 1>&3); then
    die "${error:-the fetch failed}"
  fi
  exec 3>&-
  CREDENTIAL_MODE=$(<"$STAGE/credential-mode")
  info "credential mode: $CREDENTIAL_MODE"
}

