{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "fjord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name of the release's objects: <release>-<chart>, or <release> when the
release name already contains the chart name.
*/}}
{{- define "fjord.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the operator's objects (Deployment, Service, ...).
*/}}
{{- define "fjord.operatorName" -}}
{{- printf "%s-operator" (include "fjord.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fjord.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the chart. The app.kubernetes.io/instance label is the Helm
release here; on broker pods the operator sets it to the Cluster name instead, so the
operator's selector also pins the component.
*/}}
{{- define "fjord.labels" -}}
helm.sh/chart: {{ include "fjord.chart" . }}
app.kubernetes.io/name: {{ include "fjord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fjord
{{- end }}

{{- define "fjord.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "fjord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "fjord.operatorLabels" -}}
{{ include "fjord.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "fjord.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fjord.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag, or repository@digest when a digest is set.
*/}}
{{- define "fjord.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "fjord.brokerImage" -}}
{{- default (include "fjord.image" .) .Values.brokerImage }}
{{- end }}

{{- define "fjord.leaseName" -}}
{{- default (printf "%s-leader" (include "fjord.fullname" .) | trunc 63 | trimSuffix "-") .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Watched namespaces, de-duplicated, as a list. Empty means all namespaces.
*/}}
{{- define "fjord.watchNamespaces" -}}
{{- $out := list }}
{{- range .Values.watchNamespaces }}
{{- $ns := . | toString | trim }}
{{- if and $ns (not (has $ns $out)) }}
{{- $out = append $out $ns }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
RBAC rules the operator needs on the objects it manages, in every watched namespace
(or cluster-wide). Least privilege: only the verbs the controllers use.
*/}}
{{- define "fjord.operatorRules" -}}
- apiGroups: ["fjord.dev"]
  resources: ["clusters", "topics", "consumergroups"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["fjord.dev"]
  resources: ["clusters/status", "topics/status", "consumergroups/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["fjord.dev"]
  # topics: the deletion finalizer; clusters: owner references with blockOwnerDeletion.
  resources: ["topics/finalizers", "clusters/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  # Rolling restarts go through the Eviction API, so the PodDisruptionBudget holds.
  resources: ["pods/eviction"]
  verbs: ["create"]
- apiGroups: [""]
  # Volumes grow by patching the brokers' claims; a scale-down deletes the
  # removed brokers' claims when storage.deleteClaim is set.
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  # The admin port's NetworkPolicy (networkPolicy.enabled).
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
