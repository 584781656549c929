{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "webhook-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "webhook-bridge.fullname" -}}
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
Create chart name and version as used by the chart label.
*/}}
{{- define "webhook-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "webhook-bridge.labels" -}}
helm.sh/chart: {{ include "webhook-bridge.chart" . }}
{{ include "webhook-bridge.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: webhook-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. Each workload adds app.kubernetes.io/component (worker, topics, test) so that the
Service, the PodDisruptionBudget and the autoscalers select the workers only.
*/}}
{{- define "webhook-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the worker pods.
*/}}
{{- define "webhook-bridge.workerSelectorLabels" -}}
{{ include "webhook-bridge.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Create the name of the service account to use.
*/}}
{{- define "webhook-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webhook-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then @digest when set, else :tag (default: the appVersion).
*/}}
{{- define "webhook-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the secret settings: the existing one, or the chart's.
*/}}
{{- define "webhook-bridge.secretName" -}}
{{- .Values.secret.existingSecret | default (include "webhook-bridge.fullname" .) }}
{{- end }}

{{/*
Whether the chart creates its own Secret: no existingSecret and at least one value given.
*/}}
{{- define "webhook-bridge.createSecret" -}}
{{- if not .Values.secret.existingSecret }}
{{- range $setting, $value := .Values.secret.values }}
{{- if $value }}true{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A setting's environment variable: config key in camelCase -> BRIDGE_ + UPPER_SNAKE_CASE
(retrySchedule -> BRIDGE_RETRY_SCHEDULE, successAny2xx -> BRIDGE_SUCCESS_ANY_2XX).
*/}}
{{- define "webhook-bridge.envName" -}}
{{- printf "BRIDGE_%s" (snakecase . | upper) }}
{{- end }}

{{/*
A config value as the bridge reads it: lists comma-separated, booleans true/false, whole numbers
without an exponent (YAML numbers arrive as float64 and would print as 1.048576e+06).
*/}}
{{- define "webhook-bridge.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "webhook-bridge.envValue" .) }}{{ end }}
{{- join "," $items }}
{{- else if kindIs "float64" $v }}
{{- if eq (float64 (int64 $v)) $v }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
Seconds of a duration as bridge/config.py parses it (parse_duration): 200ms, 5s, 5m, 2h, 1d or plain seconds.
*/}}
{{- define "webhook-bridge.durationSeconds" -}}
{{- $text := include "webhook-bridge.envValue" . | trim }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h|d)?$" $text) }}
{{- fail (printf "not a duration: %q (examples: 200ms, 5s, 5m, 2h, 1d)" $text) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text | float64 }}
{{- $unit := regexReplaceAll "^[0-9.]+\\s*" $text "" | default "s" }}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit }}
{{- mulf $number $scale }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value, or the drain's worst case plus the margin that
Faust needs after the drain to commit offsets and leave the consumer group. The drain waits up to
drainTimeout for in-flight deliveries, then up to max(5 s, drainTimeout) for the ones it handed to
the retry path (bridge.pipeline.drain_worst_case).
*/}}
{{- define "webhook-bridge.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- .Values.terminationGracePeriodSeconds | int64 }}
{{- else }}
{{- $drain := include "webhook-bridge.durationSeconds" (.Values.config.drainTimeout | default "20s") | float64 }}
{{- $whole := ceil $drain | int64 }}
{{- add $whole (max 5 $whole) .Values.terminationGraceMarginSeconds }}
{{- end }}
{{- end }}

{{/*
The web port (health, readiness, metrics).
*/}}
{{- define "webhook-bridge.webPort" -}}
{{- include "webhook-bridge.envValue" (.Values.config.webPort | default 6066) }}
{{- end }}

{{/*
Fail on values that cannot work: secret settings in `config`, more workers than partitions.
*/}}
{{- define "webhook-bridge.validate" -}}
{{- range $setting, $key := .Values.secret.keys }}
{{- if and (hasKey $.Values.config $setting) (not (kindIs "invalid" (index $.Values.config $setting))) }}
{{- fail (printf "config.%s is a secret setting: set secret.values.%s or secret.existingSecret instead" $setting $setting) }}
{{- end }}
{{- end }}
{{- if not .Values.config.kafkaBootstrapServers }}
{{- fail "config.kafkaBootstrapServers is required: the chart does not run the embedded broker" }}
{{- end }}
{{- $partitions := .Values.partitions | int }}
{{- if and (not .Values.autoscaling.enabled) (not .Values.keda.enabled) (gt (.Values.replicaCount | int) $partitions) }}
{{- fail (printf "replicaCount (%d) exceeds partitions (%d): workers beyond the events topic's partition count sit idle" (.Values.replicaCount | int) $partitions) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA creates its own HorizontalPodAutoscaler" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (.Values.autoscaling.maxReplicas | int) $partitions) }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds partitions (%d): workers beyond the events topic's partition count sit idle" (.Values.autoscaling.maxReplicas | int) $partitions) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (.Values.keda.maxReplicaCount | int) $partitions) }}
{{- fail (printf "keda.maxReplicaCount (%d) exceeds partitions (%d): workers beyond the events topic's partition count sit idle" (.Values.keda.maxReplicaCount | int) $partitions) }}
{{- end }}
{{- end }}

{{/*
The settings as environment variables, shared by the workers and the topics Job.
Usage: include "webhook-bridge.env" (dict "root" $ "secretName" "...")
Order: config (sorted by key), then the TLS file paths of kafkaTls unless config sets them, then
the secret settings from the Secret, then extraEnv.
*/}}
{{- define "webhook-bridge.env" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $settings := dict }}
{{- range $setting, $value := $values.config }}
{{- if not (kindIs "invalid" $value) }}
{{- $_ := set $settings $setting $value }}
{{- end }}
{{- end }}
{{- with $values.kafkaTls.existingSecret }}
{{- range $setting, $file := dict "kafkaSslCafile" $values.kafkaTls.caFile "kafkaSslCertfile" $values.kafkaTls.certFile "kafkaSslKeyfile" $values.kafkaTls.keyFile }}
{{- if and $file (not (hasKey $settings $setting)) }}
{{- $_ := set $settings $setting (printf "%s/%s" (trimSuffix "/" $values.kafkaTls.mountPath) $file) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $setting, $value := $settings }}
- name: {{ include "webhook-bridge.envName" $setting }}
  value: {{ include "webhook-bridge.envValue" $value | quote }}
{{- end }}
{{- range $setting, $key := $values.secret.keys }}
{{- if and $key (or $values.secret.existingSecret (get $values.secret.values $setting)) }}
- name: {{ include "webhook-bridge.envName" $setting }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secretName }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Container securityContext shared by every container of the chart.
*/}}
{{- define "webhook-bridge.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}
