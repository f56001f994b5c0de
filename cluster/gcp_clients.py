"""The Google API clients Ray's GCP code uses, honouring ``provider.api_endpoints``.

Ray builds its clients in one place, ``construct_clients_from_provider_config``
(ray/autoscaler/_private/gcp/config.py), with ``discovery.build`` on the
static discovery documents and no ``client_options``: always Google's public
hosts. Every client ray-gcp's launcher and autoscaler use comes from
``construct_clients`` below instead, because ``cluster.gcp_provider`` calls
it in both places Ray would call its own:

* the bootstrap (``ReadOnlyGCPNodeProvider.bootstrap_config``, run by
  ``ray up``, ``ray down`` and every other ``ray`` command that loads the
  config) and
* the node provider (``_construct_clients``, run when the provider is made on
  the provider VM for ``ray up``/``ray down``, and on the head by the
  autoscaler from ``~/ray_bootstrap_config.yaml``; and again after a
  BrokenPipeError by Ray's ``_retry``).

Ray's ``GCPCompute`` later calls ``.execute(http=...)`` with a fresh
authorised transport; that swaps the transport only, so the base URL chosen
here holds for every request.

Without ``api_endpoints`` this is Ray's own function, unchanged. With it, the
clients are built the same way (same credentials, same request builder,
same static documents) plus ``client_options={"api_endpoint": URL}`` for each
API that has one. TPU clients are never built: ray-gcp refuses TPU node
types at bootstrap (``cluster.gcp_provider._check_node_types``).
"""

from __future__ import annotations

import json
from typing import Any

from google.oauth2 import service_account
from google.oauth2.credentials import Credentials as OAuthCredentials
from googleapiclient import discovery
from ray.autoscaler._private.gcp import config as ray_gcp_config

from cluster import api_endpoints as endpoints

# As Ray's _create_crm/_create_iam/_create_compute.
API_VERSIONS = {"cloudresourcemanager": "v1", "iam": "v1", "compute": "v1"}


class ApiEndpointsError(ValueError):
    """``provider.api_endpoints`` is not a mapping of known APIs to base URLs."""


def credentials_from_provider_config(provider_config: dict[str, Any]) -> Any:
    """The credentials Ray's ``construct_clients_from_provider_config`` would use.

    ``gcp_credentials`` absent: None (googleapiclient then uses Application
    Default Credentials, as Ray does). ``credentials_token``: OAuth bearer
    credentials that never refresh. ``service_account``: the key file's JSON.
    """
    gcp_credentials = provider_config.get("gcp_credentials")
    if gcp_credentials is None:
        return None
    # Ray asserts these two keys; its schema allows only these two types.
    for key in ("type", "credentials"):
        if key not in gcp_credentials:
            raise ValueError(f"provider.gcp_credentials has no {key!r} field")
    cred_type = gcp_credentials["type"]
    field = gcp_credentials["credentials"]
    if cred_type == "service_account":
        try:
            info = json.loads(field)
        except json.JSONDecodeError:
            raise RuntimeError(
                "gcp_credentials found in cluster yaml file but formatted improperly."
            ) from None
        return service_account.Credentials.from_service_account_info(info)
    if cred_type == "credentials_token":
        return OAuthCredentials(field)
    raise ValueError(
        f"provider.gcp_credentials.type {cred_type!r}: allowed: credentials_token, "
        "service_account"
    )


def api_endpoints_of(provider_config: dict[str, Any]) -> dict[str, str]:
    """``provider.api_endpoints``, checked (raises ApiEndpointsError naming the key)."""
    value = provider_config.get("api_endpoints")
    if value is None:
        return {}
    problems = endpoints.problems(value)
    if problems:
        raise ApiEndpointsError("; ".join(problems))
    return dict(value)


def build_client(api: str, credentials: Any, api_endpoint: str | None) -> Any:
    """One client as Ray's ``_create_<api>`` builds it, at ``api_endpoint`` if given."""
    return discovery.build(
        api,
        API_VERSIONS[api],
        credentials=credentials,
        requestBuilder=ray_gcp_config.build_request,
        cache_discovery=False,
        client_options={"api_endpoint": api_endpoint} if api_endpoint else None,
    )


def construct_clients(provider_config: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """``(crm, iam, compute, tpu)`` as Ray's function returns them, at the configured endpoints."""
    urls = api_endpoints_of(provider_config)
    if not urls:
        return ray_gcp_config.construct_clients_from_provider_config(provider_config)
    credentials = credentials_from_provider_config(provider_config)
    crm, iam, compute = (
        build_client(api, credentials, urls.get(api))
        for api in ("cloudresourcemanager", "iam", "compute")
    )
    return crm, iam, compute, None
