"""The sparse autoencoder of "Scaling Monosemanticity", its trainer and its activation cache.

Imports torch, numpy and safetensors; transformers and tqdm in activations.py, pyyaml in
cli.py, and datasets (optional) in corpus.py.
"""
