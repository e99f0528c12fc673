{{/* Names, labels and checks shared by every template. */}}

{{- define "mlscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlscale.fullname" -}}
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

{{/* Selector labels: stable for the life of a release (a Deployment's selector is immutable). */}}
{{- define "mlscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The stable track's pods. A canary Deployment (made by the rollout operator) labels its
pods track=canary: the two Deployments never select each other's pods, the Service selects both. */}}
{{- define "mlscale.stableSelectorLabels" -}}
{{ include "mlscale.selectorLabels" . }}
mlscale.dev/track: stable
{{- end -}}

{{/* Labels of every object the release makes, but its component. */}}
{{- define "mlscale.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{ include "mlscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mlscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlscale.labels" -}}
{{ include "mlscale.commonLabels" . }}
app.kubernetes.io/component: model-server
{{- end -}}

{{/* The model server's pods, of both tracks, and nothing else (not the helm test pod): what
the PodDisruptionBudget and the NetworkPolicy apply to. */}}
{{- define "mlscale.serverSelectorLabels" -}}
{{ include "mlscale.selectorLabels" . }}
app.kubernetes.io/component: model-server
{{- end -}}

{{- define "mlscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlscale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlscale.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) (ternary "-slim" "" .Values.image.slim) -}}
{{- end -}}
{{- end -}}

{{/* Long enough for the drain delay, the in-flight grace period, and a margin. */}}
{{- define "mlscale.terminationGracePeriod" -}}
{{- add .Values.server.shutdownDelaySeconds .Values.server.gracePeriodSeconds 5 -}}
{{- end -}}

{{/* Checks that span several values (the schema checks each value alone). */}}
{{- define "mlscale.validateValues" -}}
{{- $errors := list -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- $errors = append $errors (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v): lower the minimum or raise the maximum." .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- if and .Values.autoscaling.targetCPUUtilizationPercentage (not .Values.resources.requests.cpu) -}}
{{- $errors = append $errors "autoscaling targets CPU utilisation, which is relative to the CPU request: set resources.requests.cpu (e.g. 250m)." -}}
{{- end -}}
{{- if and .Values.autoscaling.targetMemoryUtilizationPercentage (not .Values.resources.requests.memory) -}}
{{- $errors = append $errors "autoscaling targets memory utilisation: set resources.requests.memory (e.g. 256Mi)." -}}
{{- end -}}
{{- if not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage .Values.autoscaling.podsMetrics) -}}
{{- $errors = append $errors "autoscaling is enabled without a metric: set targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or podsMetrics." -}}
{{- end -}}
{{- end -}}
{{- if .Values.pdb.enabled -}}
{{- $floor := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled -}}
{{- if lt (int $floor) 2 -}}
{{- $errors = append $errors (printf "a PodDisruptionBudget with %v replica: a node drain evicts the only pod and the service is down until it is back. Run at least 2 replicas (autoscaling.minReplicas, or replicaCount), or set pdb.enabled=false to accept that." $floor) -}}
{{- end -}}
{{- end -}}
{{- if .Values.gateway.enabled -}}
{{- if not (or .Values.gateway.parentRefs .Values.gateway.create.enabled) -}}
{{- $errors = append $errors "gateway.enabled needs a Gateway to attach the route to: name it in gateway.parentRefs (e.g. [{name: my-gateway, namespace: gateway-system}]), or set gateway.create.enabled=true with gateway.create.className." -}}
{{- end -}}
{{- if and .Values.gateway.create.enabled (not .Values.gateway.create.className) -}}
{{- $errors = append $errors "gateway.create.enabled needs gateway.create.className: the GatewayClass of your Gateway API implementation (kubectl get gatewayclass)." -}}
{{- end -}}
{{- else -}}
{{- range .Values.rollout.steps -}}
{{- if or (eq (int .weight) 0) (gt (int (.mirror | default 0)) 0) -}}
{{- $errors = append $errors (printf "rollout.steps has a step of weight %v, mirror %v: a step of weight 0 (pinned requests only) or one that mirrors needs a gateway (gateway.enabled=true); without one a canary takes a share of the pods' connections." .weight (.mirror | default 0)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $names := list .Values.model.name -}}
{{- $fromImages := ne .Values.model.image.repository "" -}}
{{- range .Values.model.others -}}
{{- if has .name $names -}}
{{- $errors = append $errors (printf "model.others names %s twice (model.name counts): each model of the set once." .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- if ne $fromImages (ne ((.image | default dict).repository | default "") "") -}}
{{- $errors = append $errors (printf "model.others: %s has %s model image while model.image %s: the pods read one store, filled from model images or the server image's own, so every model of the set comes from an image, or none does." .name (ternary "a" "no" (not $fromImages)) (ternary "is set" "is not" $fromImages)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.image.slim (not $fromImages) -}}
{{- $errors = append $errors "image.slim holds no models: ship them as model images (model.image, from mlscale package), compiled (mlscale publish --runtime onnx), or set image.slim=false." -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nmlscale: invalid values:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}

{{/*
The model version to render. After install the rollout operator owns it: a `helm upgrade` keeps
the version the stable Deployment serves (read with `lookup`), so it neither reverts a rollout
(Helm 3) nor fights the operator over the field (Helm 4's server-side apply). With
`model.helmOwnsVersion: true`, or where nothing is live yet (install, `helm template`):
`model.version`.
*/}}
{{- define "mlscale.modelVersion" -}}
{{- $deployment := include "mlscale.liveDeployment" . | fromJson -}}
{{- $live := dig "metadata" "annotations" "mlscale.dev/model-version" "" $deployment -}}
{{- $live | default (toString .Values.model.version) -}}
{{- end -}}

{{/*
The model image the pods copy their version from, or "" without one. Like the version, the
operator owns it after install: upgrades keep the live one (the Deployment's
mlscale.dev/model-image annotation) unless model.helmOwnsVersion is set.
*/}}
{{- define "mlscale.modelImage" -}}
{{- $deployment := include "mlscale.liveDeployment" . | fromJson -}}
{{- $live := dig "metadata" "annotations" "mlscale.dev/model-image" "" $deployment -}}
{{- with .Values.model.image -}}
{{- $live | default (include "mlscale.declaredImage" .) -}}
{{- end -}}
{{- end -}}

{{/*
A model image as values declare it ({repository, tag}): `repository:tag`, or "" without a
repository. A tag given as a number (tag: 2) reads as the string.
*/}}
{{- define "mlscale.declaredImage" -}}
{{- if .repository -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}
{{- end -}}

{{/*
The other models of the set, as MLSCALE_MODELS (`name:version,...`). Like model.version, a version
the operator has moved since is kept on upgrades (read from the live Deployment's environment)
unless model.helmOwnsVersion is set.
*/}}
{{- define "mlscale.otherModels" -}}
{{- $live := dict -}}
{{- $deployment := include "mlscale.liveDeployment" . | fromJson -}}
{{- range (dig "spec" "template" "spec" "containers" list $deployment) -}}
{{- range (.env | default list) -}}
{{- if eq .name "MLSCALE_MODELS" -}}
{{- range splitList "," (.value | default "") -}}
{{- $_ := set $live (first (splitList ":" .)) (last (splitList ":" .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $entries := list -}}
{{- range .Values.model.others -}}
{{- $entries = append $entries (printf "%s:%s" .name (get $live .name | default (toString .version))) -}}
{{- end -}}
{{- join "," $entries -}}
{{- end -}}

{{/*
The model image of one of the other models ("" without one), kept on upgrades like the version:
the live init container `model-NAME`'s. Called with (dict "root" $ "model" .).
*/}}
{{- define "mlscale.otherModelImage" -}}
{{- $live := "" -}}
{{- $deployment := include "mlscale.liveDeployment" .root | fromJson -}}
{{- range (dig "spec" "template" "spec" "initContainers" list $deployment) -}}
{{- if eq .name (printf "model-%s" $.model.name) -}}
{{- $live = .image -}}
{{- end -}}
{{- end -}}
{{- with (.model.image | default dict) -}}
{{- $live | default (include "mlscale.declaredImage" .) -}}
{{- end -}}
{{- end -}}

{{/*
The live stable Deployment as JSON ({} when nothing is live, or model.helmOwnsVersion is set):
what the operator may have moved since the last upgrade.
*/}}
{{- define "mlscale.liveDeployment" -}}
{{- $deployment := dict -}}
{{- if not .Values.model.helmOwnsVersion -}}
{{- $deployment = lookup "apps/v1" "Deployment" .Release.Namespace (include "mlscale.fullname" .) | default dict -}}
{{- end -}}
{{- toJson $deployment -}}
{{- end -}}

{{/*
The live ModelRollout, when its spec should be kept: it was rendered from the values given now.
`helm upgrade` with a new model.version (or model.image, or rollout.*) declares what the values
say, and the controller rolls it out; an upgrade that leaves them as they were keeps the live
spec, so a version (and strategy) set since with `mlscale rollout` is neither reverted nor
fought over (Helm 4's server-side apply would see another manager's fields).
*/}}
{{- define "mlscale.liveRollout" -}}
{{- $live := lookup "mlscale.dev/v1alpha1" "ModelRollout" .Release.Namespace .Release.Name -}}
{{- $annotations := dig "metadata" "annotations" dict ($live | default dict) -}}
{{- if and $live (eq (index $annotations "mlscale.dev/values" | default "") (include "mlscale.rolloutValues" .)) -}}
{{- toJson $live.spec -}}
{{- end -}}
{{- end -}}

{{/* A digest of the values the ModelRollout is rendered from (the gateway's only where it
is on, so that releases without one keep the digest charts before it gave them). */}}
{{- define "mlscale.rolloutValues" -}}
{{- $image := set (deepCopy .Values.model.image) "tag" (toString .Values.model.image.tag) -}}
{{- $values := dict "version" (toString .Values.model.version) "image" $image "rollout" .Values.rollout -}}
{{- if .Values.gateway.enabled -}}
{{- $_ := set $values "gateway" (include "mlscale.traffic" . | fromJson) -}}
{{- end -}}
{{- $values | toJson | sha256sum | trunc 16 -}}
{{- end -}}

{{/* The ModelRollout's spec.traffic, as JSON. */}}
{{- define "mlscale.traffic" -}}
{{- if .Values.gateway.enabled -}}
{{- dict "router" "Gateway" "implementation" .Values.gateway.implementation "pinHeader" .Values.gateway.pinHeader "retries" .Values.gateway.retries "maxBodyBytes" (.Values.server.maxBodyBytes | int64) | toJson -}}
{{- else -}}
{{- dict "router" "ReplicaRatio" | toJson -}}
{{- end -}}
{{- end -}}

{{/* The Gateways the HTTPRoute attaches to, as a JSON array. */}}
{{- define "mlscale.gatewayParents" -}}
{{- if .Values.gateway.parentRefs -}}
{{- toJson .Values.gateway.parentRefs -}}
{{- else -}}
{{- list (dict "name" (include "mlscale.fullname" .)) | toJson -}}
{{- end -}}
{{- end -}}

{{- define "mlscale.operatorName" -}}
{{- printf "%s-operator" (include "mlscale.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlscale.operatorSelectorLabels" -}}
{{ include "mlscale.selectorLabels" . }}
app.kubernetes.io/component: rollout-operator
{{- end -}}

{{- define "mlscale.operatorImage" -}}
{{- with .Values.operator.image -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (toString (default $.Chart.AppVersion .tag)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
