"""kopf handlers: thin, each calls a pure builder and patches what the cluster says."""
