# ---- 10. ready ---------------------------------------------------------------------
mark_ready() {
  step 10 "ready"
  {
    echo "ray-gcp provider VM boot completed $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "ray=$RAY_VERSION python=$PYTHON_MINOR uv=$UV_VERSION credential-mode=$CREDENTIAL_MODE"
    echo "bundle-sha256=$(<"$STAGE/bundle.sha256")"
  } >"$STAGE/READY"
  chmod 644 "$STAGE/READY"
  mv -f "$STAGE/READY" "$READY"
  info "next: ray up $PROVIDER_CLUSTER_YAML (members of $OPERATOR_GROUP get their credentials at login)"
}

