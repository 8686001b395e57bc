{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "stowage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every object: the release name, plus the chart name unless it is part of it. */}}
{{- define "stowage.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "stowage.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "stowage.labels" -}}
helm.sh/chart: {{ include "stowage.chart" . }}
app.kubernetes.io/name: {{ include "stowage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stowage
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "stowage.selectorLabels" (dict "root" . "component" "controller") */}}
{{- define "stowage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stowage.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects. */}}
{{- define "stowage.componentLabels" -}}
{{ include "stowage.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Stowage image, by digest when one is given. */}}
{{- define "stowage.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "stowage.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "stowage.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stowage.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "stowage.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The cache registry URL the controller pushes to. */}}
{{- define "stowage.cacheUrl" -}}
{{- if .Values.cache.enabled -}}
{{- printf "%s://%s-cache.%s.svc:%d" (ternary "https" "http" .Values.cache.tls.enabled) (include "stowage.fullname" .) .Release.Namespace (int .Values.cache.service.port) -}}
{{- else -}}
{{- required "cache.externalUrl is required when cache.enabled is false" .Values.cache.externalUrl -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding the cache registry's shared http.secret (key http-secret), or nothing: the
user's cache.httpSecret.existingSecret, else the chart's own with more than one replica.
*/}}
{{- define "stowage.cacheHttpSecretName" -}}
{{- if .Values.cache.httpSecret.existingSecret -}}
{{- .Values.cache.httpSecret.existingSecret -}}
{{- else if gt (int .Values.cache.replicas) 1 -}}
{{- printf "%s-cache-http-secret" (include "stowage.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The cache URL nodes (containerd on the host network) use. */}}
{{/* The URL the controller pushes to: cache.controllerEndpoint, else the cache URL above. */}}
{{- define "stowage.cacheControllerUrl" -}}
{{- default (include "stowage.cacheUrl" .) .Values.cache.controllerEndpoint -}}
{{- end -}}

{{/* hostNetwork and the DNS policy that keeps cluster DNS with it, for a component's values: include "stowage.hostNetwork" .Values.agent */}}
{{- define "stowage.hostNetwork" -}}
{{- if .hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}

{{/* "true" when the pull-through front runs in the cache pod: the chart's cache, front on, no TLS (the front serves HTTP). */}}
{{- define "stowage.cacheFrontEnabled" -}}
{{- if and .Values.cache.enabled .Values.cache.front.enabled (not .Values.cache.tls.enabled) -}}true{{- end -}}
{{- end -}}

{{/* The front's URL on the cache Service. */}}
{{- define "stowage.cacheFrontUrl" -}}
{{- printf "http://%s-cache.%s.svc:%d" (include "stowage.fullname" .) .Release.Namespace (int .Values.cache.front.port) -}}
{{- end -}}

{{/* The Secret with the node-token HMAC key (key `secret`): the user's, else the chart's own. */}}
{{- define "stowage.nodeTokenSecretName" -}}
{{- default (printf "%s-node-token" (include "stowage.fullname" .)) .Values.cache.front.nodeToken.existingSecret -}}
{{- end -}}

{{/* The cache URL nodes use: cache.nodeEndpoint, else the front when it runs, else the registry. */}}
{{- define "stowage.cacheNodeEndpoint" -}}
{{- if .Values.cache.nodeEndpoint -}}
{{- .Values.cache.nodeEndpoint -}}
{{- else if include "stowage.cacheFrontEnabled" . -}}
{{- include "stowage.cacheFrontUrl" . -}}
{{- else -}}
{{- include "stowage.cacheUrl" . -}}
{{- end -}}
{{- end -}}

{{/* argocd.argoproj.io/sync-wave annotation line (or nothing), when enabled: include "stowage.syncWave" (dict "root" . "wave" "-1") */}}
{{- define "stowage.syncWave" -}}
{{- if .root.Values.argocd.syncWaves -}}
argocd.argoproj.io/sync-wave: {{ .wave | quote }}
{{- end -}}
{{- end -}}

{{/* "true" when Prometheus operator objects may be rendered: the API is served or force is set. */}}
{{- define "stowage.monitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* Pod security context of every Stowage pod but the agent: restricted Pod Security. */}}
{{- define "stowage.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stowage.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The fan-out mode: "off", "planned" or "external" (a bare YAML `off` arrives as false). Fails the
render, saying what to set, for what the schema cannot check or say clearly: planned needs the
agent on the host network, since containerd on the node pulls through the agent's mirror on
127.0.0.1; external needs the peer layer's URL; either needs the agent writing hosts.toml.
*/}}
{{- define "stowage.fanoutMode" -}}
{{- $mode := .Values.fanout.mode -}}
{{- if kindIs "bool" $mode }}{{ $mode = "off" }}{{ end -}}
{{- if ne $mode "off" -}}
{{- if not .Values.agent.enabled -}}
{{- fail (printf "fanout.mode %s needs the node agent: set agent.enabled true, or fanout.mode off" $mode) -}}
{{- end -}}
{{- if not .Values.agent.mirrorConfig -}}
{{- fail (printf "fanout.mode %s needs agent.mirrorConfig true: the agents write the hosts.toml that puts the peer mirror before the cache" $mode) -}}
{{- end -}}
{{- end -}}
{{- if and (eq $mode "planned") (not .Values.agent.hostNetwork) -}}
{{- fail "fanout.mode planned needs agent.hostNetwork true: containerd on each node pulls through the agent's mirror on 127.0.0.1 (fanout.mirrorPort), which an agent reaches only in the node's network namespace, and peers reach each other at the node's InternalIP (fanout.peerPort). Set agent.hostNetwork true (both ports and agent.healthPort are then taken on every node)" -}}
{{- end -}}
{{- if and (eq $mode "external") (not .Values.fanout.externalMirror) -}}
{{- fail "fanout.mode external needs fanout.externalMirror: the URL of the peer layer's node mirror (Spegel, dfdaemon) as containerd on each node reaches it, e.g. http://$(HOST_IP):30020" -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* The Secret with the fan-out peer-token secret (key fanout.secret.key): the user's, else the chart's own. */}}
{{- define "stowage.fanoutSecretName" -}}
{{- default (printf "%s-fanout" (include "stowage.fullname" .)) .Values.fanout.secret.existingSecret -}}
{{- end -}}
