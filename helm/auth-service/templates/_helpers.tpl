{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "auth-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name contains the chart name. */}}
{{- define "auth-service.fullname" -}}
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

{{- define "auth-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auth-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The server pods (Deployment, Services, PDB, anti-affinity); backup pods carry
     app.kubernetes.io/component: backup instead and must never receive traffic. */}}
{{- define "auth-service.serverSelectorLabels" -}}
{{ include "auth-service.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "auth-service.labels" -}}
helm.sh/chart: {{ include "auth-service.chart" . }}
{{ include "auth-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: authd
{{- end }}

{{- define "auth-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auth-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with mongo-uri and redis-password. */}}
{{- define "auth-service.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "auth-service.fullname" . }}
{{- end }}
{{- end }}

{{- define "auth-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + drain_timeout + 2 s SIGKILL margin + slack. */}}
{{- define "auth-service.terminationGracePeriod" -}}
{{- add .Values.authd.preStopSleepSeconds (ceil .Values.authd.drainTimeout) 10 }}
{{- end }}

{{/* Container security context shared by the server and the backup job. */}}
{{- define "auth-service.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "auth-service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Volumes shared by the server and the backup job (config, secrets, keys, TLS, tmpfs). */}}
{{- define "auth-service.volumes" -}}
- name: config
  configMap:
    name: {{ include "auth-service.fullname" . }}
- name: secrets
  secret:
    secretName: {{ include "auth-service.secretName" . }}
    defaultMode: 0440
    items:
      - key: mongo-uri
        path: mongo-uri
      - key: redis-password
        path: redis-password
- name: signing-keys
  secret:
    secretName: {{ .Values.signingKeys.secretName }}
    defaultMode: 0440
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
- name: run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 8Mi
{{- end }}

{{- define "auth-service.volumeMounts" -}}
- name: config
  mountPath: /etc/authd/authd.conf
  subPath: authd.conf
  readOnly: true
- name: secrets
  mountPath: /etc/authd/secrets
  readOnly: true
- name: signing-keys
  mountPath: /etc/authd/keys
  readOnly: true
- name: tls
  mountPath: /etc/authd/tls
  readOnly: true
- name: run
  mountPath: /run/authd
- name: tmp
  mountPath: /tmp
{{- end }}
