{{/*
The release's base name: the release name, cut to fit the 63-character
names that labels and some objects need.
*/}}
{{- define "dra-wasm-host.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* A host's name (DaemonSet, ConfigMap): the release's for "main", suffixed otherwise. Called with (dict "root" $ "host" $host). */}}
{{- define "dra-wasm-host.hostName" -}}
{{- if eq .host.name "main" -}}
{{- include "dra-wasm-host.fullname" .root -}}
{{- else -}}
{{- printf "%s-%s" (include "dra-wasm-host.fullname" .root) .host.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dra-wasm-host.labels" -}}
app.kubernetes.io/name: dra-wasm-host
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dra-wasm-host.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Every driver name of every host, sorted, once each. */}}
{{- define "dra-wasm-host.driverNames" -}}
{{- $names := list -}}
{{- range .Values.hosts -}}
{{- range .drivers -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- toJson ($names | uniq | sortAlpha) -}}
{{- end -}}

{{/*
A TOML value, inline: strings and booleans as JSON writes them (valid TOML
basic strings), numbers without a fraction as integers (Helm reads every
YAML number as a float), lists as arrays, maps as inline tables.
*/}}
{{- define "dra-wasm-host.tomlValue" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $k, $v := . -}}
{{- if not $first }}, {{ end -}}{{- $first = false -}}
{{ include "dra-wasm-host.tomlKey" $k }} = {{ include "dra-wasm-host.tomlValue" $v }}
{{- end -}} }
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . -}}{{- if $i }}, {{ end -}}{{ include "dra-wasm-host.tomlValue" $v }}{{- end -}}]
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (kindIs "string" .) (kindIs "bool" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- toJson . -}}
{{- else if kindIs "invalid" . -}}
{{- fail "host.toml: a null value (TOML has none); remove the key instead" -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{/* A TOML key: bare when it can be, quoted otherwise. */}}
{{- define "dra-wasm-host.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* The lines `key = value` of a table, from a map (keys in order). */}}
{{- define "dra-wasm-host.tomlTable" -}}
{{- $lines := list -}}
{{- range $k, $v := . -}}
{{- $lines = append $lines (printf "%s = %s" (include "dra-wasm-host.tomlKey" $k) (include "dra-wasm-host.tomlValue" $v)) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* Guest memory per driver in MiB: idle (request) and during a hot swap (limit), docs/operations.md "Memory". */}}
{{- define "dra-wasm-host.memory" -}}
{{- $n := int .runtime.maxInstances -}}
{{- $l := int .runtime.memoryLimitMiB -}}
{{- $drivers := len .drivers -}}
{{- $request := add 40 (mul $drivers $n (min $l 8)) -}}
{{- $limit := add 40 (mul $drivers 2 $n $l) -}}
{{- toJson (dict "requests" (dict "memory" (printf "%dMi" $request) "cpu" "10m") "limits" (dict "memory" (printf "%dMi" $limit))) -}}
{{- end -}}

{{/* The hosts, each merged over hostDefaults, as a JSON list. */}}
{{- define "dra-wasm-host.hosts" -}}
{{- $hosts := list -}}
{{- range .Values.hosts -}}
{{- $hosts = append $hosts (merge (deepCopy .) (deepCopy $.Values.hostDefaults)) -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/* A host's host.toml. Called with (dict "root" $ "host" $host). */}}
{{- define "dra-wasm-host.hostToml" -}}
# Rendered by the dra-wasm-host chart from its values (host "{{ .host.name }}").
# node_name comes from $NODE_NAME (downward API).
kubelet_root_dir = {{ .root.Values.kubeletRootDir | toJson }}
cdi_dir = {{ .root.Values.cdiDir | toJson }}
cache_dir = "/var/cache/dra-wasm-host"
{{- $bind := .root.Values.bindAddress }}
{{- if contains ":" $bind }}{{ $bind = printf "[%s]" $bind }}{{ end }}
healthcheck_addr = "{{ $bind }}:{{ int .host.ports.health }}"
metrics_addr = "{{ $bind }}:{{ int .host.ports.metrics }}"

[claims]
source = "api-server"

[kubernetes]
qps = {{ float64 .host.kubernetes.qps | printf "%.1f" }}
burst = {{ int .host.kubernetes.burst }}

[hot_swap]
enabled = {{ .host.hotSwap.enabled }}
debounce_ms = {{ int .host.hotSwap.debounceMs }}
probation_calls = {{ int .host.hotSwap.probationCalls }}
max_failed_calls = {{ int .host.hotSwap.maxFailedCalls }}

[runtime]
memory_limit_mib = {{ int .host.runtime.memoryLimitMiB }}
max_instances = {{ int .host.runtime.maxInstances }}
{{- if .host.nvml.enabled }}

[nvml]
driver_root = {{ .host.nvml.driverRoot | toJson }}
{{- end }}
{{- range $d := .host.drivers }}

[[drivers]]
name = {{ $d.name | toJson }}
guest = {{ printf "/etc/dra-wasm-host/guests/%s" $d.guest | toJson }}
grants = {{ $d.grants | default list | toJson }}
taint_unhealthy = {{ $d.taintUnhealthy | default false }}
{{- $netcfg := $d.net | default dict }}
{{- if has "net" ($d.grants | default list) }}
{{- /* The attach hook where the install-hook init container puts it. */}}
{{- $netcfg = merge (deepCopy $netcfg) (dict "hook_path" "/opt/dra-wasm-host/bin/dra-wasm-host") }}
{{- end }}
{{- with $netcfg }}
[drivers.net]
{{ include "dra-wasm-host.tomlTable" . }}
{{- end }}
{{- with $d.policy }}
[drivers.policy]
{{ include "dra-wasm-host.tomlTable" . }}
{{- end }}
{{- with $d.config }}
[drivers.config]
{{ include "dra-wasm-host.tomlTable" . }}
{{- end }}
{{- end }}
{{- end -}}
