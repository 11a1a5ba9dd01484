"""Scaling-law analysis: pure functions over DataFrames and arrays, one MLflow reader."""
