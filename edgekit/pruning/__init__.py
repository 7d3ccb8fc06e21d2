"""Parts of the prune and distill stages: Torch-Pruning setup, importance, sensitivity,
sparsity, latency-targeted search, the iterative schedule and saving pruned models."""
