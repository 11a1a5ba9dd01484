"""Ray cluster configs (ray up, KubeRay) and starting or joining Ray from the driver."""
