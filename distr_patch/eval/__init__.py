"""The evaluation harness: accuracy (perplexity, multiple choice, image top-k / fidelity) and latency of
exact attention vs DistrAttention per group size; results as JSON, markdown tables and plots.

Submodules import ``datasets``/``evaluate`` only where they are used, so ``bench`` runs without them.
"""
