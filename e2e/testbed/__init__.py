"""The e2e test bed: a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) with kwok fake GPU nodes and a process runner, all as local processes. Test-only."""
