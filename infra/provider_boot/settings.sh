#!/bin/bash
# ray-gcp: the provider VM's startup script (GCE metadata key `startup-script`).
#
# Template: infra/boot.py renders it, replacing each placeholder (a name between
# double at-signs) with a value from cluster/layout.py, so the VM and the Ray
# cluster config never disagree about a path or a version. It runs as root on EVERY boot and is idempotent: a rerun
# with unchanged metadata changes nothing on disk. It holds names and paths
# only, never secret material: secrets come from Secret Manager at boot.
# What it does, step by step, and the operator access model: infra/BOOT.md.
set -Eeuo pipefail
shopt -s inherit_errexit
umask 022

# ---- rendered from cluster/layout.py by infra/boot.py -----------------------
RAY_VERSION=@@RAY_VERSION@@
PYTHON_MINOR=@@PYTHON_MINOR@@
UV_VERSION=@@UV_VERSION@@
PROVIDER_ROOT=@@PROVIDER_ROOT@@
PROVIDER_VENV=@@PROVIDER_VENV@@
PROVIDER_SRC=@@PROVIDER_SRC@@
PROVIDER_TOOLS=@@PROVIDER_TOOLS@@
PROVIDER_CONFIG_DIR=@@PROVIDER_CONFIG_DIR@@
PROVIDER_CLUSTER_YAML=@@PROVIDER_CLUSTER_YAML@@
PROVIDER_SECRETS_DIR=@@PROVIDER_SECRETS_DIR@@
PROVIDER_READY=@@PROVIDER_READY@@
OPERATOR_GROUP=@@OPERATOR_GROUP@@
OPERATOR_HELPER=@@OPERATOR_HELPER@@
OPERATOR_SUDOERS=@@OPERATOR_SUDOERS@@
LOGIN_PROFILE=@@LOGIN_PROFILE@@
AUTOSTOP_CONFIG=@@AUTOSTOP_CONFIG@@
AUTOSTOP_STATE_DIR=@@AUTOSTOP_STATE_DIR@@
AUTOSTOP_UNIT=@@AUTOSTOP_UNIT@@
IDLE_STATUS_COMMAND=@@IDLE_STATUS_COMMAND@@
AUTOSTOP_CONFIG_ENV=@@AUTOSTOP_CONFIG_ENV@@
SYSTEMD_UNIT_DIR=@@SYSTEMD_UNIT_DIR@@
# Per-operator copies, relative to the operator's home (layout's "~/..." paths).
OPERATOR_DIR=@@OPERATOR_DIR@@
OPERATOR_SSH_KEY=@@OPERATOR_SSH_KEY@@
OPERATOR_AUTH_TOKEN=@@OPERATOR_AUTH_TOKEN@@
OPERATOR_SA_KEY=@@OPERATOR_SA_KEY@@
BUNDLE_REQUIREMENTS=@@BUNDLE_REQUIREMENTS@@
UV_REQUIREMENTS=@@UV_REQUIREMENTS@@
META_CLUSTER_CONFIG=@@META_CLUSTER_CONFIG@@
META_BUNDLE=@@META_BUNDLE@@
META_SECRETS=@@META_SECRETS@@
META_CREDENTIAL_MODE=@@META_CREDENTIAL_MODE@@
META_OPERATORS=@@META_OPERATORS@@
META_IDLE_TIMEOUT=@@META_IDLE_TIMEOUT@@
SECRET_SSH_PRIVATE_KEY=@@SECRET_SSH_PRIVATE_KEY@@
SECRET_RAY_AUTH_TOKEN=@@SECRET_RAY_AUTH_TOKEN@@
SECRET_SA_KEY=@@SECRET_SA_KEY@@
SYSTEM_PACKAGES=(@@SYSTEM_PACKAGES@@)

# ---- overridable so tests/infra/test_boot.py can run it in a sandbox ---------
# Every absolute path below is prefixed by ROOT; GCE_METADATA_HOST is the
# variable Google's client libraries honour too. Unset on a real VM.
ROOT=${RAY_GCP_ROOT:-}
# systemd may start the guest agent without HOME; pip and uv look for it.
export HOME=${HOME:-/root}
METADATA_HOST=${GCE_METADATA_HOST:-metadata.google.internal}
SECRETMANAGER_ENDPOINT=${SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}
RETRY_BASE_DELAY=${RAY_GCP_RETRY_BASE_DELAY:-1}

CONFIG_DIR=$ROOT$PROVIDER_CONFIG_DIR
READY=$ROOT$PROVIDER_READY
SECRETS_DIR=$ROOT$PROVIDER_SECRETS_DIR
CLUSTER_YAML=$ROOT$PROVIDER_CLUSTER_YAML
VENV=$ROOT$PROVIDER_VENV
VENV_MARKER=$VENV/.ray-gcp-requirements
SRC=$ROOT$PROVIDER_SRC
SRC_MARKER=$SRC/.ray-gcp-bundle.sha256
TOOLS=$ROOT$PROVIDER_TOOLS
UV=$TOOLS/bin/uv
HELPER=$ROOT$OPERATOR_HELPER
SUDOERS=$ROOT$OPERATOR_SUDOERS
PROFILE=$ROOT$LOGIN_PROFILE
AUTOSTOP_JSON=$ROOT$AUTOSTOP_CONFIG
AUTOSTOP_SERVICE=$ROOT$SYSTEMD_UNIT_DIR/$AUTOSTOP_UNIT.service
AUTOSTOP_TIMER=$ROOT$SYSTEMD_UNIT_DIR/$AUTOSTOP_UNIT.timer
IDLE_COMMAND=$ROOT$IDLE_STATUS_COMMAND
# OS Login usernames of the ray-gcp:operators users (metadata key META_OPERATORS).
OPERATORS_FILE=$CONFIG_DIR/operators
# Staging dirs sit next to their targets so the final install is a rename.
STAGE=$CONFIG_DIR/.boot-staging
SRC_STAGE=$ROOT$PROVIDER_ROOT/.boot-staging

TAG=ray-gcp-boot
STEP=start
FAIL_REASON=
HOLDS_LOCK=0
FILES_WRITTEN=0  # install_file counts what it (re)writes

