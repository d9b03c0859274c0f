"""Online prediction: the model registry (`registry`), deployments of registered versions on
KServe's Python model server supervised by the platform (`supervisor`, `kserve_server`), the
hub service that routes and authorizes requests to them (`router`), and the KServe
`InferenceService` manifest of a deployment for Kubernetes (`manifest`). See docs/serving.md."""
