"""The sparse autoencoder of "Scaling Monosemanticity", its trainer and its activation cache.

Imports torch, numpy and safetensors only (transformers in activations.py alone).
"""
