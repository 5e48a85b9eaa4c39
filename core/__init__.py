"""NotebookOS for Kubernetes: the core package (API models, pure policy, simulator, CLI).

Nothing in this package talks to Kubernetes; the operator, extender and kernel do.
"""

__version__ = "0.1.0"
