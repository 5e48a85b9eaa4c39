"""kopf handlers: thin, each maps an event to the object to reconcile and calls the Reconciler.

Importing this package registers the handlers with kopf's default registry.
"""

from .kernels import kernel_event, replica_event
from .lifecycle import now, startup
from .pods import node_event, pod_event

__all__ = ["kernel_event", "node_event", "now", "pod_event", "replica_event", "startup"]
