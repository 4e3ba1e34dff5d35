"""Detection: the only package (with the worker) that imports torch.

Model builder, datasets, augmentations, training and evaluation engine, metrics, decision rule,
model bundles and the predictor.
"""
