{{/* The chart's name. */}}
{{- define "annotator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Objects' name: the release, with the chart's name unless the release holds it. */}}
{{- define "annotator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "annotator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "annotator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "annotator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "annotator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "annotator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "annotator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the secrets are mounted. */}}
{{- define "annotator.secretDir" -}}/var/run/secrets/recaptcha-annotator{{- end -}}

{{/*
The service's config: the values' `config`, the admin port on every interface, and a
`*_file` key for each secret given.
*/}}
{{- define "annotator.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $dir := include "annotator.secretDir" . -}}
{{- $admin := default dict $config.admin -}}
{{- $_ := set $admin "listen" (printf "0.0.0.0:%v" .Values.service.port) -}}
{{- $_ := set $config "admin" $admin -}}
{{- $recaptcha := default dict $config.recaptcha -}}
{{- $cache := default dict $config.cache -}}
{{- $kafka := default dict $config.kafka -}}
{{- $properties := default dict $kafka.properties -}}
{{- with .Values.secrets -}}
{{- if .apiKey.secretName }}{{ $_ := set $recaptcha "api_key_file" (printf "%s/api-key" $dir) }}{{ end -}}
{{- if .credentialsFile.secretName }}{{ $_ := set $recaptcha "credentials_file" (printf "%s/credentials.json" $dir) }}{{ end -}}
{{- if .accountIdHmacKey.secretName }}{{ $_ := set $recaptcha "account_id_hmac_key_file" (printf "%s/hmac-key" $dir) }}{{ end -}}
{{- if .redisUrl.secretName }}{{ $_ := set $cache "redis_url_file" (printf "%s/redis-url" $dir) }}{{ end -}}
{{- if .saslPassword.secretName }}{{ $_ := set $properties "sasl.password_file" (printf "%s/sasl-password" $dir) }}{{ end -}}
{{- end -}}
{{- if $properties }}{{ $_ := set $kafka "properties" $properties }}{{ end -}}
{{- $_ := set $config "recaptcha" $recaptcha -}}
{{- $_ := set $config "cache" $cache -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- toToml $config -}}
{{- end -}}

{{/* delivery.shutdown_timeout in seconds, for the forms "30s", "2m" and "1m30s"; 30 (the default) when unset. */}}
{{- define "annotator.shutdownSeconds" -}}
{{- $raw := "30s" -}}
{{- with .Values.config.delivery }}{{ with .shutdown_timeout }}{{ $raw = . }}{{ end }}{{ end -}}
{{- $minutes := 0 -}}
{{- $seconds := 0 -}}
{{- with regexFind "[0-9]+m" $raw }}{{ $minutes = trimSuffix "m" . | atoi }}{{ end -}}
{{- with regexFind "[0-9]+s$" $raw }}{{ $seconds = trimSuffix "s" . | atoi }}{{ end -}}
{{- add (mul $minutes 60) $seconds -}}
{{- end -}}

{{/* Non-empty when any secret is given. */}}
{{- define "annotator.anySecret" -}}
{{- range $name, $secret := .Values.secrets }}{{ if $secret.secretName }}yes{{ end }}{{ end -}}
{{- end -}}
