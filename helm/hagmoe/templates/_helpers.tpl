{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "hagmoe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it holds the chart's. */}}
{{- define "hagmoe.fullname" -}}
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

{{- define "hagmoe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hagmoe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hagmoe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hagmoe.labels" -}}
helm.sh/chart: {{ include "hagmoe.chart" . }}
{{ include "hagmoe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference-server
{{- end }}

{{- define "hagmoe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hagmoe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hagmoe.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.variant) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "hagmoe.apiKeySecretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "hagmoe.fullname" .)) }}
{{- end }}

{{/* The model folder inside the container, or "" for the image's bundled model. */}}
{{- define "hagmoe.modelPath" -}}
{{- if eq .Values.model.source "pvc" }}
{{- $path := trimPrefix "/" .Values.model.pvc.path }}
{{- if $path }}{{ printf "%s/%s" .Values.model.pvc.mountPath $path }}{{ else }}{{ .Values.model.pvc.mountPath }}{{ end }}
{{- end }}
{{- end }}

{{/* Refuse values that would render a broken deployment (the schema checks types). */}}
{{- define "hagmoe.validate" -}}
{{- $drain := int .Values.server.drainTimeoutSeconds }}
{{- $preStop := int .Values.lifecycle.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $drain $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + server.drainTimeoutSeconds (%d + %d): the kubelet would kill requests still draining" (int .Values.terminationGracePeriodSeconds) $preStop $drain) }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName" }}
{{- end }}
{{- if and (eq .Values.probes.type "grpc") (eq (int .Values.server.grpcPort) 0) }}
{{- fail "probes.type=grpc needs gRPC: server.grpcPort is 0" }}
{{- end }}
{{- if and .Values.apiKeys.enabled (not .Values.apiKeys.existingSecret) (not .Values.apiKeys.keys) }}
{{- fail "apiKeys.enabled needs apiKeys.existingSecret or apiKeys.keys" }}
{{- end }}
{{- if and .Values.gpu.enabled (eq .Values.server.device "cpu") }}
{{- fail "gpu.enabled with server.device=cpu: set server.device (e.g. cuda) or use values-gpu.yaml" }}
{{- end }}
{{- end }}
