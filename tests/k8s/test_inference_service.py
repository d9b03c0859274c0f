"""A deployment's KServe InferenceService (mlp/serving/manifest.py) against KServe's own CRD on the
test control plane: the API server checks each rendered manifest with the CRD's schema (strict
field validation, server-side dry run), as a cluster that runs KServe would on `kubectl apply`.
The CRD comes from KServe's released Go module (scripts/k8s-build.sh)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.rest import ApiException

from mlp.devcluster import Cluster, kserve_crd
from mlp.serving.manifest import inference_service

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


@pytest.fixture
async def api(k8s: Cluster) -> AsyncIterator[kclient.ApiClient]:
    cfg = kclient.Configuration()
    await kconfig.load_kube_config(config_file=str(k8s.kubeconfig), client_configuration=cfg)
    client = kclient.ApiClient(configuration=cfg)
    yield client
    await client.close()


async def install_kserve_crd(api: kclient.ApiClient) -> None:
    ext = kclient.ApiextensionsV1Api(api)
    crd = yaml.safe_load(kserve_crd().read_text())
    try:
        await ext.create_custom_resource_definition(crd)
    except ApiException as e:
        if e.status != 409:  # already installed by an earlier test of this session
            raise
    deadline = time.monotonic() + 60
    while True:  # the API server serves the new resource once the CRD is Established
        got = await ext.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = got.status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        assert time.monotonic() < deadline, f"KServe's CRD not Established: {conditions}"
        await asyncio.sleep(0.1)


def deployment(model: str, **resources: float) -> SimpleNamespace:
    return SimpleNamespace(
        id=7, model=model, version=3, user="alice",
        resources={"cpu": 0.5, "memory": 2 << 30, "replicas": 2, **resources},
    )


async def dry_run_create(api: kclient.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return await kclient.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )


@pytest.mark.parametrize(
    "row",
    [
        deployment("ctr"),
        deployment("7days", cpu=2, memory=512 << 20, replicas=1),
        deployment("a" * 63, cpu=0.25, memory=1536 << 20, replicas=3),
    ],
    ids=["ctr", "leading-digit", "longest-name"],
)
async def test_rendered_inference_services_pass_kserves_schema(
    api: kclient.ApiClient, namespace: str, row: SimpleNamespace
) -> None:
    await install_kserve_crd(api)
    manifest = inference_service(row)
    accepted = await dry_run_create(api, namespace, manifest)
    # Nothing was pruned or defaulted away: the server kept the predictor as rendered.
    assert accepted["spec"]["predictor"] == manifest["spec"]["predictor"]
    assert accepted["metadata"]["name"] == manifest["metadata"]["name"]


async def test_the_schema_check_is_real(api: kclient.ApiClient, namespace: str) -> None:
    """The same call refuses what KServe's schema does not allow, so passing means something."""
    await install_kserve_crd(api)
    misspelt = inference_service(deployment("ctr"))
    misspelt["spec"]["predictor"]["model"]["storageURI"] = "pvc://x"
    with pytest.raises(ApiException) as e:
        await dry_run_create(api, namespace, misspelt)
    assert e.value.status in (400, 422) and "storageURI" in str(e.value.body)
    bad_replicas = inference_service(deployment("ctr"))
    bad_replicas["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(ApiException) as e:
        await dry_run_create(api, namespace, bad_replicas)
    assert e.value.status in (400, 422) and "minReplicas" in str(e.value.body)
