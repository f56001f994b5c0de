"""Where things live on the provider VM and on the Ray nodes.

One module shared by ``infra/`` (the provider VM's boot script) and ``cluster/``
(the autoscaler config), so the two can never disagree about a path, a
metadata key or a version.
"""

# The exact Ray and Python minor every machine runs. tests/ check these
# against uv.lock and the dev venv, so a lock bump cannot leave them stale.
RAY_VERSION = "2.60.0"
PYTHON_MINOR = "3.11"
# uv installs the nodes' packages; pinned like everything else we run remotely.
UV_VERSION = "0.13.8"

# The nodes' exact packages (exported from uv.lock), relative to the project
# root and so to the bundle's root.
NODE_REQUIREMENTS = "cluster/requirements-node.txt"
# uv itself, pinned by hash (Linux wheels), for the provider VM and the nodes.
UV_REQUIREMENTS = "cluster/requirements-uv.txt"

# ---- provider VM (runs `ray up`) -------------------------------------------
PROVIDER_ROOT = "/opt/ray-gcp"
PROVIDER_VENV = "/opt/ray-gcp/venv"
# The unpacked bundle: cluster/, workloads/, requirements-node.txt.
PROVIDER_SRC = "/opt/ray-gcp/src"
# A venv of its own holding the pinned uv (the boot script installs it).
PROVIDER_TOOLS = "/opt/ray-gcp/tools"
PROVIDER_CONFIG_DIR = "/etc/ray-gcp"
PROVIDER_CLUSTER_YAML = "/etc/ray-gcp/cluster.yaml"
PROVIDER_SECRETS_DIR = "/etc/ray-gcp/secrets"
OPERATOR_GROUP = "ray-operators"
# Autostop (ray-gcp:idleTimeoutMinutes): the watcher's settings, written by the
# boot script, and its state (JSON, no secrets: operators read it).
PROVIDER_AUTOSTOP_CONFIG = "/etc/ray-gcp/autostop.json"
PROVIDER_AUTOSTOP_STATE_DIR = "/var/lib/ray-gcp-autostop"
AUTOSTOP_UNIT = "ray-gcp-autostop"  # .service (one check) and .timer (every minute)
IDLE_STATUS_COMMAND = "/usr/local/bin/ray-gcp-idle"
# Per-operator copies (mode 0600, owned by the operator) that cluster.yaml
# names; ssh refuses a private key that others can read.
OPERATOR_DIR = "~/.ray-gcp"
OPERATOR_SSH_KEY = "~/.ray-gcp/ray-launcher-key"
OPERATOR_AUTH_TOKEN = "~/.ray-gcp/ray-auth-token"
OPERATOR_SA_KEY = "~/.ray-gcp/service-account-key.json"  # credentialMode=key only

# Instance metadata keys on the provider VM (none of them secret).
META_CLUSTER_CONFIG = "ray-cluster-config"
META_BUNDLE = "ray-gcp-bundle"  # base64 of a deterministic tar.gz
META_SECRETS = "ray-gcp-secrets"  # JSON: {logical name: Secret Manager version path}
META_CREDENTIAL_MODE = "ray-gcp-credential-mode"  # "metadata" | "key"
META_OPERATORS = "ray-gcp-operators"  # JSON list: OS Login usernames of ray-gcp:operators users
META_IDLE_TIMEOUT = "ray-gcp-idle-timeout-minutes"  # "0" (autostop off) or "5".."10080"

# Logical secret names (keys of the META_SECRETS JSON).
SECRET_SSH_PRIVATE_KEY = "ssh-private-key"
SECRET_RAY_AUTH_TOKEN = "ray-auth-token"
SECRET_SA_KEY = "service-account-key"  # only in credentialMode=key

# ---- Ray nodes (head and workers) ------------------------------------------
NODE_SSH_USER = "ray"
NODE_SRC = "~/ray-gcp"  # file_mounts target for the bundle
NODE_VENV = "~/ray-venv"
NODE_AUTH_TOKEN = "~/.ray/auth_token"  # Ray's default token path
# Where a node keeps the environments of users' own jobs, one per lock
# (cluster/userjob.py); exported to Ray as $RAY_GCP_JOB_ENVS.
NODE_JOB_ENVS = "~/ray-job-envs"

# ---- GKE / KubeRay (platform=gke) --------------------------------------------
# The KubeRay release: Helm chart `kuberay-operator` of this version (chart
# version = release tag without the "v"), its CRDs vendored in
# tests/cluster/kuberay_crds/. 1.7.0 is the newest tag in ray-project/kuberay
# (fetched snapshot of 2026-08-19; a 1.7.1 bump PR exists, no tag), the first
# line with token auth via `authOptions.secretName`. Its e2e tests run Ray
# 2.55.0; Ray 2.60.0 is newer than anything v1.7.0 tests (untested pairing,
# within KubeRay's "newest Ray minors" support policy; see cluster/README.md).
KUBERAY_VERSION = "1.7.0"
KUBERAY_HELM_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_CHART = "kuberay-operator"
# Official Ray images by exact tag, not digest: no registry is reachable here
# to resolve (and test) a digest offline. The tag names the exact Ray and
# Python; `-gpu` is the CUDA build of the same release.
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py{PYTHON_MINOR.replace('.', '')}"
RAY_GPU_IMAGE = f"{RAY_IMAGE}-gpu"
# The GKE minor we target (REGULAR channel); core Kubernetes objects are
# validated against this minor's OpenAPI schemas (kubernetes-validate).
GKE_MINOR = "1.35"
# Where the workloads/ ConfigMap is mounted in every Ray pod (and the
# working_dir of RayJob/RayService), so `import common` works as on a VM.
KUBE_WORKLOADS_DIR = "/home/ray/ray-gcp/workloads"
# A user's job files (a ConfigMap) are mounted under this, one folder per RayJob.
KUBE_JOBS_DIR = "/home/ray/ray-gcp/jobs"
# $RAY_GCP_JOB_ENVS in every Ray pod: the job environments (the image's user is ray).
KUBE_JOB_ENVS = "/home/ray/ray-job-envs"
