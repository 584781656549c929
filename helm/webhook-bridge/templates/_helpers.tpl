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
Selector labels of the API pods (api.enabled).
*/}}
{{- define "webhook-bridge.apiSelectorLabels" -}}
{{ include "webhook-bridge.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end }}

{{/*
Name of the API's objects (Deployment, Service, Ingress, ...): the full name + "-api".
*/}}
{{- define "webhook-bridge.apiName" -}}
{{- printf "%s-api" (include "webhook-bridge.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the Secret holding the API's token file: the existing one, or the chart's.
*/}}
{{- define "webhook-bridge.apiTokensSecretName" -}}
{{- .Values.api.tokens.existingSecret | default (printf "%s-tokens" (include "webhook-bridge.apiName" . | trunc 56 | trimSuffix "-")) }}
{{- end }}

{{/*
The API's token file as the chart creates it from api.tokens.entries: JSON, hashed entries only.
Fails on anything that is not a hashed entry, so a raw token never reaches a Secret even when
the schema is skipped (helm --skip-schema-validation).
*/}}
{{- define "webhook-bridge.apiTokensFile" -}}
{{- $allowed := list "name" "sha256" "scopes" "site_id" "user_id" }}
{{- $entries := list }}
{{- $seen := dict }}
{{- range $i, $entry := .Values.api.tokens.entries }}
{{- if not (kindIs "map" $entry) }}
{{- fail (printf "api.tokens.entries[%d]: expected a mapping as `python -m bridge.api token` prints it" $i) }}
{{- end }}
{{- range $key, $_ := $entry }}
{{- if not (has $key $allowed) }}
{{- fail (printf "api.tokens.entries[%d]: unknown key %q: an entry holds the token's sha256, never the token (python -m bridge.api token prints the entry)" $i $key) }}
{{- end }}
{{- end }}
{{- $name := $entry.name | default "" | toString }}
{{- if or (not $name) (hasPrefix "wbt_" $name) }}
{{- fail (printf "api.tokens.entries[%d]: name must be a non-empty label, not a token" $i) }}
{{- end }}
{{- $digest := $entry.sha256 | default "" | toString | lower }}
{{- if not (regexMatch "^[0-9a-f]{64}$" $digest) }}
{{- fail (printf "api.tokens.entries[%d] (%s): sha256 must be the 64 hex digits of the token's SHA-256, never the token itself" $i $name) }}
{{- end }}
{{- if hasKey $seen $digest }}
{{- fail (printf "api.tokens.entries[%d] (%s): the same sha256 as another entry" $i $name) }}
{{- end }}
{{- $_ := set $seen $digest true }}
{{- $scopes := $entry.scopes | default list }}
{{- if or (not (kindIs "slice" $scopes)) (not $scopes) (without $scopes "read" "write") }}
{{- fail (printf "api.tokens.entries[%d] (%s): scopes must be a non-empty list of read, write" $i $name) }}
{{- end }}
{{- $out := dict "name" $name "sha256" $digest "scopes" $scopes }}
{{- range $key := list "site_id" "user_id" }}
{{- if hasKey $entry $key }}
{{- $value := get $entry $key | default "" | toString }}
{{- if not (trim $value) }}
{{- fail (printf "api.tokens.entries[%d] (%s): %s must be a non-empty string (left empty, the token would be of every site and account; leave the key out for that)" $i $name $key) }}
{{- end }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- $entries = append $entries $out }}
{{- end }}
{{- dict "tokens" $entries | toJson }}
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
The key of a secret setting in the Secret: secret.keys.<setting>. In the chart-created Secret an
empty key falls back to the setting in kebab-case (apiToken -> api-token), so that a value given
in secret.values is never dropped; with existingSecret "" leaves the setting out.
Usage: include "webhook-bridge.secretKey" (dict "root" $ "setting" "apiToken")
*/}}
{{- define "webhook-bridge.secretKey" -}}
{{- $secret := .root.Values.secret }}
{{- $key := get $secret.keys .setting | default "" }}
{{- if and (not $key) (not $secret.existingSecret) }}
{{- $key = kebabcase .setting }}
{{- end }}
{{- $key }}
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
A config value as the bridge reads it: lists comma-separated, booleans true/false, numbers
without an exponent (YAML numbers arrive as float64 and would print as 1.048576e+06 or 1e-05,
which the bridge's durations do not read).
*/}}
{{- define "webhook-bridge.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "webhook-bridge.envValue" .) }}{{ end }}
{{- join "," $items }}
{{- else if kindIs "float64" $v }}
{{- if eq (floor $v) $v }}{{ printf "%.0f" $v }}
{{- else if contains "e" (toString $v) }}{{ regexReplaceAll "0+$" (printf "%.12f" $v) "" }}
{{- else }}{{ $v }}{{ end }}
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
Whether the pods advertise an IPv6 pod IP (api.podIPv6 where a pod IP is advertised: api.enabled,
or workers that route reads): their probes, scrapes and peers then come to an IPv6 address.
*/}}
{{- define "webhook-bridge.podIPv6" -}}
{{- if and .Values.api.podIPv6 (or .Values.api.enabled (include "webhook-bridge.workersRoute" .)) }}true{{ end }}
{{- end }}

{{/*
The address the web server binds (BRIDGE_WEB_HOST): config.webHost, else 0.0.0.0, or on IPv6 pods
(webhook-bridge.podIPv6) every address, IPv4 and IPv6.
*/}}
{{- define "webhook-bridge.webHost" -}}
{{- if kindIs "invalid" .Values.config.webHost }}
{{- /* "" is every address, IPv4 and IPv6, to asyncio's server: "::" alone is bound IPv6-only
(IPV6_V6ONLY), which would refuse 127.0.0.1 inside the pod and IPv4 scrapes of a dual-stack pod. */}}
{{- ternary "" "0.0.0.0" (include "webhook-bridge.podIPv6" . | eq "true") }}
{{- else }}
{{- toString .Values.config.webHost }}
{{- end }}
{{- end }}

{{/*
The web port (health, readiness, metrics).
*/}}
{{- define "webhook-bridge.webPort" -}}
{{- include "webhook-bridge.envValue" (.Values.config.webPort | default 6066) }}
{{- end }}

{{/*
A boolean setting as the bridge reads it (parse_bool): "true" when true, "" otherwise.
*/}}
{{- define "webhook-bridge.bool" -}}
{{- if has (toString . | trim | lower) (list "1" "true" "yes" "on") }}true{{ end }}
{{- end }}

{{/*
Whether the bridge containers get a setting (camelCase): from config, from the Secret, or from
extraEnv; extraEnvFrom may hold anything, so with it every setting counts as given.
Usage: include "webhook-bridge.given" (dict "root" $ "setting" "apiTokens")
*/}}
{{- define "webhook-bridge.given" -}}
{{- $values := .root.Values }}
{{- $setting := .setting }}
{{- $env := include "webhook-bridge.envName" $setting }}
{{- $value := get $values.config $setting }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}true{{ end }}
{{- if hasKey $values.secret.keys $setting }}
{{- if and (include "webhook-bridge.secretKey" .) (or $values.secret.existingSecret (get $values.secret.values $setting)) }}true{{ end }}
{{- end }}
{{- range $values.extraEnv }}{{ if eq (toString .name) $env }}true{{ end }}{{ end }}
{{- if $values.extraEnvFrom }}true{{ end }}
{{- end }}

{{/*
Fails unless an allowNetworks entry is a network as ipaddress.ip_network reads it: no host bits
set (10.1.0.1/16 is refused; the schema checks the notation).
*/}}
{{- define "webhook-bridge.checkNetwork" -}}
{{- $network := . }}
{{- $parts := splitList "/" $network }}
{{- if eq (len $parts) 2 }}
{{- $address := index $parts 0 }}
{{- $prefix := index $parts 1 | atoi }}
{{- $groups := list }}
{{- $width := 8 }}
{{- if contains ":" $address }}
{{- $width = 16 }}
{{- $halves := splitList "::" $address }}
{{- $left := compact (splitList ":" (index $halves 0)) }}
{{- $right := list }}
{{- if eq (len $halves) 2 }}
{{- $right = compact (splitList ":" (index $halves 1)) }}
{{- end }}
{{- $zeros := list }}
{{- range until (sub 8 (add (len $left) (len $right)) | int) }}{{ $zeros = append $zeros "0" }}{{ end }}
{{- range concat $left $zeros $right }}{{ $groups = append $groups (printf "0x%s" . | int) }}{{ end }}
{{- else }}
{{- range splitList "." $address }}{{ $groups = append $groups (atoi .) }}{{ end }}
{{- end }}
{{- range $i, $group := $groups }}
{{- $hostBits := sub (mul (add $i 1) $width) $prefix | int }}
{{- if gt $hostBits 0 }}
{{- $size := 1 }}
{{- range until (min $hostBits $width | int) }}{{ $size = mul $size 2 }}{{ end }}
{{- if ne (mod $group $size) 0 }}
{{- fail (printf "config.allowNetworks: %s has host bits set: give the network's own address, every bit after the first %d zero (10.1.0.0/16, not 10.1.0.1/16)" $network $prefix) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fail on values that cannot work: secret settings in `config`, more workers than partitions, and
the rules of bridge/config.py (Settings.__post_init__) between settings that values.schema.json
cannot say, so that a release never starts workers that refuse their settings.
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
{{- if and .Values.keda.enabled (lt (.Values.keda.minReplicaCount | int) 1) }}
{{- fail "keda.minReplicaCount must be at least 1: the trigger watches the events topic, and with no worker the retry topics' due retries wait (and go after the topics' 3 days)" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- range $list := list "kafka" "dns" }}
{{- if not (get (get $.Values.networkPolicy $list) "ports") }}
{{- fail (printf "networkPolicy.%s.ports is empty: a NetworkPolicy rule without ports allows every port (with no peers named, every address)" $list) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.keda.enabled (gt (.Values.keda.maxReplicaCount | int) $partitions) }}
{{- fail (printf "keda.maxReplicaCount (%d) exceeds partitions (%d): workers beyond the events topic's partition count sit idle" (.Values.keda.maxReplicaCount | int) $partitions) }}
{{- end }}
{{- if .Values.api.enabled }}
{{- range $setting := list "role" "apiTokens" "advertisedUrl" "deliveryLog" }}
{{- if not (kindIs "invalid" (get $.Values.config $setting)) }}
{{- fail (printf "config.%s is set by the chart when api.enabled (workers --role deliver, the API Deployment --role api with the delivery log, api.tokens and its pod IP): leave it unset" $setting) }}
{{- end }}
{{- end }}
{{- if not (or .Values.api.tokens.existingSecret .Values.api.tokens.entries) }}
{{- fail "api.enabled needs tokens: api.tokens.entries (as `python -m bridge.api token` prints them) or api.tokens.existingSecret" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.serviceMonitor.enabled .Values.api.networkPolicy.from (not .Values.networkPolicy.ingress.from) }}
{{- fail "the API pods could not be scraped: api.networkPolicy.from limits their web port, which serves /v1 and /metrics alike, and networkPolicy.ingress.from is empty, so no scraper is named. List Prometheus' pods or namespace in networkPolicy.ingress.from (an empty list would open /v1 to any source)" }}
{{- end }}
{{- end }}
{{- $config := .Values.config }}
{{- $given := dict }}
{{- range $setting := list "kafkaSaslMechanism" "kafkaSaslUsername" "kafkaSaslPassword" "apiTokens" }}
{{- $_ := set $given $setting (include "webhook-bridge.given" (dict "root" $ "setting" $setting)) }}
{{- end }}
{{- $protocol := $config.kafkaSecurityProtocol | default "PLAINTEXT" | toString | upper | trim }}
{{- if hasPrefix "SASL_" $protocol }}
{{- if not $given.kafkaSaslMechanism }}
{{- fail (printf "config.kafkaSecurityProtocol %s needs config.kafkaSaslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $protocol) }}
{{- end }}
{{- if not $given.kafkaSaslUsername }}
{{- fail (printf "config.kafkaSecurityProtocol %s needs config.kafkaSaslUsername" $protocol) }}
{{- end }}
{{- if not $given.kafkaSaslPassword }}
{{- fail (printf "config.kafkaSecurityProtocol %s needs the SASL password: secret.values.kafkaSaslPassword, or secret.existingSecret with its key in secret.keys.kafkaSaslPassword" $protocol) }}
{{- end }}
{{- end }}
{{- if not .Values.api.enabled }}
{{- $role := $config.role | default "all" | toString | lower | trim }}
{{- if and (eq $role "api") (not $given.apiTokens) }}
{{- fail "config.role api needs config.apiTokens (the /v1 token file); api.enabled runs the API in a Deployment of its own and sets both" }}
{{- end }}
{{- if and (include "webhook-bridge.bool" $config.deliveryLog) (or (eq $role "deliver") (not $given.apiTokens)) }}
{{- fail "config.deliveryLog needs config.role api or all and config.apiTokens; api.enabled runs the API with the delivery log in a Deployment of its own" }}
{{- end }}
{{- with $config.apiTokens }}
{{- $path := toString . }}
{{- $mounted := false }}
{{- range $.Values.extraVolumeMounts }}
{{- $dir := trimSuffix "/" (toString .mountPath) }}
{{- if or (eq $path $dir) (hasPrefix (printf "%s/" $dir) $path) }}{{ $mounted = true }}{{ end }}
{{- end }}
{{- if and (ne $role "deliver") (not $mounted) }}
{{- fail (printf "config.apiTokens: no volume is mounted at %s, and the workers read the token file when they start. Mount it with extraVolumes and extraVolumeMounts, or use api.enabled (the chart mounts api.tokens)" $path) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* bridge/config.py's defaults: kafka_session_timeout 6, kafka_rebalance_timeout 4. */}}
{{- $session := $config.kafkaSessionTimeout | default 6.0 | float64 }}
{{- $rebalance := $config.kafkaRebalanceTimeout | default 4.0 | float64 }}
{{- if le $session (divf $rebalance 2) }}
{{- fail (printf "config.kafkaSessionTimeout (%v s) must be longer than half of config.kafkaRebalanceTimeout (%v s)" $session $rebalance) }}
{{- end }}
{{- with $config.webHost }}
{{- $host := toString . | trim | lower | trimPrefix "[" | trimSuffix "]" }}
{{- if or (regexMatch "^(::ffff:)?127\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host) (eq $host "localhost") (eq $host "::1") }}
{{- fail (printf "config.webHost %s is a loopback address: the kubelet's probes, Prometheus and the API's peers reach a worker on its pod IP, so no pod would ever be ready. Leave it unset (0.0.0.0, or every address with api.podIPv6)" (toString .)) }}
{{- end }}
{{- if and (include "webhook-bridge.podIPv6" $) (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host) }}
{{- fail (printf "config.webHost %s is an IPv4 address, while api.podIPv6 says the pods are probed, scraped and reached by their peers on their IPv6 address, where nothing would listen. Leave it unset (every address, IPv4 and IPv6), or give \"\" or an IPv6 one (:: is IPv6 alone)" (toString .)) }}
{{- end }}
{{- end }}
{{- with $config.deliveryLogMaxAge }}
{{- if lt (include "webhook-bridge.durationSeconds" . | float64) 604800.0 }}
{{- fail (printf "config.deliveryLogMaxAge (%v) must be at least 7d, the longest stats window" .) }}
{{- end }}
{{- end }}
{{- with $config.retrySchedule }}
{{- $delays := . }}
{{- if not (kindIs "slice" .) }}{{ $delays = splitList "," (toString .) }}{{ end }}
{{- range $delays }}
{{- if and (ne (toString . | trim) "") (gt (include "webhook-bridge.durationSeconds" . | float64) 86400.0) }}
{{- fail (printf "config.retrySchedule: %s is longer than 1d, the longest retry delay (a retry waits in a retry topic, which keeps records 3 days)" (include "webhook-bridge.envValue" . | trim)) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $config.allowNetworks }}
{{- $networks := . }}
{{- if not (kindIs "slice" .) }}{{ $networks = splitList "," (toString .) }}{{ end }}
{{- range $networks }}
{{- with toString . | trim }}{{ include "webhook-bridge.checkNetwork" . }}{{ end }}
{{- end }}
{{- end }}
{{- include "webhook-bridge.checkTopicsApart" . }}
{{- end }}

{{/*
Fails when two settings name one topic, as bridge/config.py does (Settings._check_topics_apart):
a source topic that is also the subscriptions topic, say, has its webhook records read as events
and dead-lettered whole. The names as the bridge resolves them, in its order: its defaults for
unset settings, and the retry tiers' topics retryTopicPrefix.1 to .N, one per retrySchedule entry
(7 unset: bridge/delivery/retry_policy.py, DEFAULT_SCHEDULE). One setting may name a topic twice
(extraSourceTopics a,a is read once).
*/}}
{{- define "webhook-bridge.checkTopicsApart" -}}
{{- $config := .Values.config }}
{{- $named := list (list "eventsTopic" ($config.eventsTopic | default "postion.events" | toString)) }}
{{- with $config.extraSourceTopics }}
{{- $extra := . }}
{{- if not (kindIs "slice" .) }}{{ $extra = splitList "," (toString .) }}{{ end }}
{{- range $extra }}
{{- with toString . | trim }}{{ $named = append $named (list "extraSourceTopics" .) }}{{ end }}
{{- end }}
{{- end }}
{{- range $pair := list (list "subscriptionsTopic" "postion.webhooks") (list "deadletterTopic" "postion.webhooks.deadletter") (list "attemptsTopic" "postion.webhooks.attempts") (list "statusTopic" "postion.webhooks.status") (list "recoveriesTopic" "postion.webhooks.recoveries") }}
{{- $setting := index $pair 0 }}
{{- $named = append $named (list $setting (get $config $setting | default (index $pair 1) | toString)) }}
{{- end }}
{{- $tiers := 7 }}
{{- with $config.retrySchedule }}
{{- $tiers = 0 }}
{{- range splitList "," (include "webhook-bridge.envValue" .) }}{{ if trim . }}{{ $tiers = add1 $tiers }}{{ end }}{{ end }}
{{- end }}
{{- $prefix := $config.retryTopicPrefix | default "postion.webhooks.retry" | toString }}
{{- range $index := until ($tiers | int) }}
{{- $named = append $named (list "retryTopicPrefix" (printf "%s.%d" $prefix (add1 $index))) }}
{{- end }}
{{- $seen := dict }}
{{- range $pair := $named }}
{{- $setting := index $pair 0 }}
{{- $topic := index $pair 1 }}
{{- $first := get $seen $topic }}
{{- if not $first }}
{{- $_ := set $seen $topic $setting }}
{{- else if ne $first $setting }}
{{- $tiersSaid := ternary (printf " (the retry tiers' topics are %s.1 to %s.%d, one per retrySchedule entry)" $prefix $prefix ($tiers | int)) "" (eq $setting "retryTopicPrefix") }}
{{- fail (printf "config.%s and config.%s name the same topic %q%s: each topic has one use, and the bridge would refuse to start" $first $setting $topic $tiersSaid) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The settings as environment variables, shared by the workers and the topics Job.
Usage: include "webhook-bridge.env" (dict "root" $ "secretName" "..." ["skip" (list "role" ...)])
(skip: config keys left out, for settings a Deployment sets itself).
Order: config (sorted by key), then the TLS file paths of kafkaTls unless config sets them, then
the secret settings from the Secret, then extraEnv.
*/}}
{{- define "webhook-bridge.env" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $settings := dict }}
{{- $skip := .skip | default list }}
{{- range $setting, $value := $values.config }}
{{- if and (not (kindIs "invalid" $value)) (not (has $setting $skip)) }}
{{- $_ := set $settings $setting $value }}
{{- end }}
{{- end }}
{{- if not (has "webHost" $skip) }}
{{- $_ := set $settings "webHost" (include "webhook-bridge.webHost" $root) }}
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
{{- range $setting, $_ := $values.secret.keys }}
{{- $key := include "webhook-bridge.secretKey" (dict "root" $root "setting" $setting) }}
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

{{/*
The URL a pod that routes delivery-log reads advertises: its pod IP (from the POD_IP variable,
set first in its env) on the web port.
*/}}
{{- define "webhook-bridge.podUrl" -}}
{{- printf "http://%s:%s" (ternary "[$(POD_IP)]" "$(POD_IP)" .Values.api.podIPv6) (include "webhook-bridge.webPort" .) }}
{{- end }}

{{/*
Whether the workers themselves hold the delivery log and serve /v1 (config.deliveryLog without
api.enabled) with no advertised URL given: each then advertises its pod IP, where the others
route reads of its partitions (until 2026-12-07 every pod advertised http://0.0.0.0:PORT and
took every partition for its own).
*/}}
{{- define "webhook-bridge.workersRoute" -}}
{{- if and (not .Values.api.enabled) (include "webhook-bridge.bool" .Values.config.deliveryLog) (not .Values.config.advertisedUrl) }}true{{ end }}
{{- end }}
