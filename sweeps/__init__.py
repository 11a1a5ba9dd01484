"""Sweep specs, their expansion into RunConfigs, and their execution on Ray with MLflow."""
