"""Deployment: turning a validated recipe into what a cluster runs (Kubernetes jobs, W&B dashboards)."""
