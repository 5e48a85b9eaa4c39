"""NotebookOS for Kubernetes: the core package (API models, pure policy, simulator, CLI, provisioner).

`api`, `policy` and `sim` are pure (no I/O); `kubeclient`, `kube`, `provisioner` and the CLI's
commands talk to Kubernetes, with the official client.
"""

__version__ = "0.1.0"
