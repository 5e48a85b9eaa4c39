{{/* Labels every object of the chart carries; "component" is the app.kubernetes.io/name. */}}
{{- define "notebookos.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/part-of: notebookos
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Pod-level security: never root, the runtime's default seccomp profile. */}}
{{- define "notebookos.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser | default 1000 }}
runAsGroup: {{ .runAsUser | default 1000 }}
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/* Container-level security: read-only root filesystem, no capabilities, no escalation. */}}
{{- define "notebookos.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities: {drop: [ALL]}
{{- end }}

{{/* The broker's in-cluster URL, what kernel pods and the node agent call. */}}
{{- define "notebookos.brokerUrl" -}}
{{- if .Values.operator.brokerUrl -}}
{{ .Values.operator.brokerUrl }}
{{- else if .Values.broker.enabled -}}
{{ printf "http://notebookos-broker.%s.svc:%d" .Release.Namespace (int .Values.broker.port) }}
{{- end -}}
{{- end }}

{{/* The node agent's user name, which the broker treats as an admin (it lists every grant). */}}
{{- define "notebookos.nodeAgentUser" -}}
{{ printf "system:serviceaccount:%s:notebookos-node-agent" .Release.Namespace }}
{{- end }}

{{/* RuntimeClass exposing the node's GPUs (NVIDIA container runtime); empty: the default one. */}}
{{- define "notebookos.gpuRuntimeClass" -}}
{{ .Values.operator.runtimeClass | default .Values.gpuRuntimeClassName }}
{{- end }}

{{/* An image built from this repository: the component's value when set, else
<images.registry>/<name>:<images.tag>, which default to Chart.yaml's notebookos.io/image-registry
annotation and appVersion (images/names.sh reads the same two for `make images`).
Call: include "notebookos.image" (list $ "control" .Values.operator.image) */}}
{{- define "notebookos.image" -}}
{{- $root := index . 0 -}}
{{- $value := index . 2 -}}
{{- if $value -}}
{{ $value }}
{{- else -}}
{{- $registry := $root.Values.images.registry | default (index $root.Chart.Annotations "notebookos.io/image-registry") -}}
{{ printf "%s/%s:%s" $registry (index . 1) ($root.Values.images.tag | default $root.Chart.AppVersion) }}
{{- end -}}
{{- end }}

{{/* The NetworkPolicy of a namespace where kernels live: its pods (replicas, routers) accept
connections from their own namespace (Raft, router to replicas), from NotebookOS's namespace (the
operator's control channel to routers) and from the given peers (the users' Jupyter servers).
Call: include "notebookos.kernelNetworkPolicy" (dict "root" $ "namespace" NS "from" PEERS) */}}
{{- define "notebookos.kernelNetworkPolicy" }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: notebookos-kernels
  namespace: {{ .namespace }}
  labels: {{- include "notebookos.labels" (dict "root" .root "component" "notebookos-kernels") | nindent 4 }}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {}
        - namespaceSelector:
            matchLabels: {kubernetes.io/metadata.name: {{ .root.Release.Namespace }}}
        {{- with .from }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
