{{/* Names and labels shared by the templates. */}}
{{- define "inferd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inferd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "inferd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "inferd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "inferd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "inferd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "inferd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "inferd.secretName" -}}
{{- default (include "inferd.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "inferd.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.redisUrl .Values.secrets.databaseUrl .Values.secrets.apiKeys .Values.secrets.adminKeys -}}true{{- end -}}
{{- end -}}
