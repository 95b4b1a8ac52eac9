{{/* Chart name, or nameOverride. */}}
{{- define "mpu-sweeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: the release name when it already contains the chart name. */}}
{{- define "mpu-sweeper.fullname" -}}
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

{{/* Labels that select the controller pods; never change them after install. */}}
{{- define "mpu-sweeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mpu-sweeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "mpu-sweeper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mpu-sweeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mpu-sweeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mpu-sweeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mpu-sweeper.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the controller does with the API, and nothing more: watch MultipartCleanups and patch their
status, get the Secrets they name (re-read on every run, never listed or watched, so the
controller holds no Secret it was not pointed at), and record Events on them.
*/}}
{{- define "mpu-sweeper.rules" -}}
- apiGroups: ["mpusweeper.io"]
  resources: ["multipartcleanups"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["mpusweeper.io"]
  resources: ["multipartcleanups/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* A duration in maxAge syntax (26h, 1d12h, 2w) as whole seconds, for PromQL comparisons. */}}
{{- define "mpu-sweeper.seconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+[smhdw]" . -1 }}
{{- $total = add $total (mul (trimSuffix (regexFind "[smhdw]$" .) . | atoi) (get $units (regexFind "[smhdw]$" .))) }}
{{- end }}
{{- $total }}
{{- end }}
