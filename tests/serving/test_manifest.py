"""The KServe InferenceService rendering of a deployment: the fields the CRD requires
(apiVersion, kind, metadata.name as a DNS-1035 label, spec.predictor with one model format)."""

from __future__ import annotations

from types import SimpleNamespace

from mlp.serving.manifest import DNS1035, inference_service, quantity_cpu, quantity_memory


def row(model: str = "ctr", **resources: float) -> SimpleNamespace:
    return SimpleNamespace(
        id=7, model=model, version=3, user="alice",
        resources={"cpu": 0.5, "memory": 2 << 30, "replicas": 2, **resources})


def test_required_fields_and_resources() -> None:
    m = inference_service(row())
    assert m["apiVersion"] == "serving.kserve.io/v1beta1" and m["kind"] == "InferenceService"
    assert DNS1035.match(m["metadata"]["name"])
    predictor = m["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 2
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "tensorflow"}
    assert model["storageUri"] == "pvc://mlp-models/ctr/3"
    assert model["resources"]["requests"] == {"cpu": "500m", "memory": "2Gi"}
    assert m["metadata"]["labels"]["mlp.jupyterhub.org/deployment"] == "7"


def test_names_that_start_with_a_digit_become_dns_labels() -> None:
    m = inference_service(row("7days"), )
    assert m["metadata"]["name"] == "m-7days" and DNS1035.match(m["metadata"]["name"])
    assert inference_service(row(), storage_uri="s3://b/ctr/3")["spec"]["predictor"][
        "model"]["storageUri"] == "s3://b/ctr/3"


def test_quantities() -> None:
    assert [quantity_cpu(c) for c in (1, 2.0, 0.25, 1.5)] == ["1", "2", "250m", "1500m"]
    assert [quantity_memory(m) for m in (1 << 30, 512 << 20, 1536, 1000)] == [
        "1Gi", "512Mi", "1536", "1000"]
