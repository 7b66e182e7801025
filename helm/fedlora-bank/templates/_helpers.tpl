{{/* Chart name (nameOverride wins). */}}
{{- define "fedlora-bank.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: prefix of every object name. */}}
{{- define "fedlora-bank.fullname" -}}
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

{{/* The namespace every object goes to: the chart-managed one or the release namespace. */}}
{{- define "fedlora-bank.namespace" -}}
{{- if .Values.namespace.create }}
{{- if eq .Values.namespace.name .Release.Namespace }}
{{- fail (printf "namespace.create=true: install the release in another namespace than %q (e.g. helm install -n fedlora-system ...), or set namespace.create=false and use the existing namespace" .Values.namespace.name) }}
{{- end }}
{{- .Values.namespace.name }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Common labels. */}}
{{- define "fedlora-bank.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fedlora-bank.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedlora
fedlora.io/bank: {{ .Values.bank.name | quote }}
{{- end }}

{{/* Selector labels. */}}
{{- define "fedlora-bank.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedlora-bank.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels that select the trainer pods (NetworkPolicies). */}}
{{- define "fedlora-bank.trainerSelectorLabels" -}}
{{ include "fedlora-bank.selectorLabels" . }}
app.kubernetes.io/component: trainer
{{- end }}

{{/* Labels of the trainer Jobs and pods (no Helm labels: the bank's agent, not Helm, creates them). */}}
{{- define "fedlora-bank.trainerLabels" -}}
{{ include "fedlora-bank.trainerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fedlora
fedlora.io/bank: {{ .Values.bank.name | quote }}
{{- end }}

{{/* Labels that select the agent's pods (its NetworkPolicy). */}}
{{- define "fedlora-bank.agentSelectorLabels" -}}
{{ include "fedlora-bank.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The agent's own ServiceAccount name (the only subject of the agent's Role). */}}
{{- define "fedlora-bank.agentServiceAccountName" -}}
{{- default (printf "%s-agent" (include "fedlora-bank.fullname" .)) .Values.agent.serviceAccount.name }}
{{- end }}

{{/* How a pod reaches the exchange bucket: FEDLORA_STORE_* and, with store.existingSecret, the static keys
(the trainer and the agent both use it). */}}
{{- define "fedlora-bank.storeEnv" -}}
- name: FEDLORA_STORE_URI
  value: {{ .Values.store.uri | quote }}
{{- with .Values.store.endpointUrl }}
- name: FEDLORA_STORE_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.store.region }}
- name: FEDLORA_STORE_REGION
  value: {{ . | quote }}
{{- end }}
- name: FEDLORA_STORE_PATH_STYLE
  value: {{ .Values.store.pathStyle | quote }}
- name: FEDLORA_STORE_SSE
  value: {{ .Values.store.sse | quote }}
{{- with .Values.store.sseKmsKeyId }}
- name: FEDLORA_STORE_SSE_KMS_KEY_ID
  value: {{ . | quote }}
{{- end }}
{{- with .Values.store.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.store.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.store.secretAccessKeyKey }}
{{- if $.Values.store.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.store.sessionTokenKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The CA bundle's environment (caBundle.configMap), or nothing. */}}
{{- define "fedlora-bank.caEnv" -}}
{{- if .Values.caBundle.configMap }}
{{- $bundle := printf "/etc/fedlora/ca/%s" .Values.caBundle.key }}
- name: AWS_CA_BUNDLE
  value: {{ $bundle | quote }}
- name: REQUESTS_CA_BUNDLE
  value: {{ $bundle | quote }}
- name: SSL_CERT_FILE
  value: {{ $bundle | quote }}
{{- end }}
{{- end }}

{{/* The trainer's ServiceAccount name. */}}
{{- define "fedlora-bank.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-trainer" (include "fedlora-bank.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The trainer image reference: by digest when one is given. */}}
{{- define "fedlora-bank.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* FEDLORA_BANK_DATA: where the trainer reads the bank's private data. */}}
{{- define "fedlora-bank.dataPath" -}}
{{- if eq .Values.data.source "pvc" }}
{{- if .Values.data.pvc.path }}
{{- printf "/data/bank/%s" (trimPrefix "/" .Values.data.pvc.path) }}
{{- else }}
{{- "/data/bank" }}
{{- end }}
{{- else }}
{{- .Values.data.bucket.uri }}
{{- end }}
{{- end }}

{{/* Cross-field checks the schema cannot state with a clear message. */}}
{{- define "fedlora-bank.validate" -}}
{{- range .Values.trainer.extraEnv }}
{{- if regexMatch "(?i)(SECRET|PASSWORD|TOKEN|CREDENTIAL|ACCESS_KEY)" .name }}
{{- fail (printf "trainer.extraEnv %s: credentials are not allowed as plain values; put them in a Secret and use store.existingSecret or data.bucket.existingSecret" .name) }}
{{- end }}
{{- if hasPrefix "FEDLORA_REQUEST_" .name }}
{{- fail (printf "trainer.extraEnv %s: FEDLORA_REQUEST_* variables carry the request the bank's agent fills in" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- define "fedlora-bank.validateNamespace" -}}
{{- range $key, $_ := .Values.namespace.labels }}
{{- if hasPrefix "pod-security.kubernetes.io/" $key }}
{{- fail (printf "namespace.labels %s: the Pod Security labels are fixed at restricted by this chart" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ledger's claim name (ledger.pvc), or "" when the ledger is in a bucket. */}}
{{- define "fedlora-bank.ledgerClaim" -}}
{{- if .Values.ledger.pvc.create }}
{{- default (printf "%s-ledger" (include "fedlora-bank.fullname" .)) .Values.ledger.pvc.claimName }}
{{- else }}
{{- .Values.ledger.pvc.claimName }}
{{- end }}
{{- end }}

{{/* FEDLORA_BANK_LEDGER: the mounted ledger directory, or the s3:// URI. */}}
{{- define "fedlora-bank.ledger" -}}
{{- if include "fedlora-bank.ledgerClaim" . }}
{{- "/var/lib/fedlora/ledger" }}
{{- else }}
{{- .Values.ledger.uri }}
{{- end }}
{{- end }}

{{/* Where the trainer finds the base model's Hugging Face hub cache ("" = the image's default). */}}
{{- define "fedlora-bank.modelCache" -}}
{{- if eq .Values.model.source "pvc" }}
{{- if .Values.model.pvc.path }}
{{- printf "/models/%s" (trimPrefix "/" .Values.model.pvc.path) }}
{{- else }}
{{- "/models" }}
{{- end }}
{{- else }}
{{- .Values.model.image.cacheDir }}
{{- end }}
{{- end }}

{{/* The ledger must live somewhere the bank owns, in exactly one place. */}}
{{- define "fedlora-bank.validateLedger" -}}
{{- $pvc := include "fedlora-bank.ledgerClaim" . }}
{{- if and (not $pvc) (not .Values.ledger.uri) }}
{{- fail "ledger: the bank's privacy ledger needs a home out of the consortium's reach: set ledger.pvc.claimName (an existing writable claim), ledger.pvc.create=true, or ledger.uri (s3:// in the bank's private bucket)" }}
{{- end }}
{{- if and $pvc .Values.ledger.uri }}
{{- fail "ledger: set either ledger.pvc or ledger.uri, not both (one ledger composes every run on the same data)" }}
{{- end }}
{{- if and .Values.ledger.uri (ne .Values.data.source "bucket") }}
{{- fail "ledger.uri is read and written with the private data bucket's credentials and endpoint (data.bucket.*): use data.source=bucket, or ledger.pvc" }}
{{- end }}
{{- end }}

{{/* checkov skips with their reasons for how the image is referenced and pulled (a YAML list). */}}
{{- define "fedlora-bank.imageSkips" -}}
{{- $skips := list }}
{{- if not .Values.image.digest }}
{{- $skips = append $skips "CKV_K8S_43=the image tag is pinned (image.tag, never latest); set image.digest to pull by digest" }}
{{- if ne .Values.image.pullPolicy "Always" }}
{{- $skips = append $skips "CKV_K8S_15=image.pullPolicy IfNotPresent with a pinned version tag (never latest); set image.digest to make the reference immutable, or image.pullPolicy Always" }}
{{- end }}
{{- end }}
{{- toYaml $skips }}
{{- end }}

{{/* sidecar.istio.io/inject "false" (label and annotation) on the chart's pods, unless istio.inject. */}}
{{- define "fedlora-bank.meshLabels" -}}
{{- if not .Values.istio.inject }}
sidecar.istio.io/inject: "false"
{{- end }}
{{- end }}

{{/* Workload identity by a projected token (workloadIdentity.projectedToken): the AWS SDK's web identity
environment of a pod whose role is the second argument ("" = none). */}}
{{- define "fedlora-bank.identityEnv" -}}
{{- $root := index . 0 }}{{- $role := index . 1 }}
{{- if and $root.Values.workloadIdentity.projectedToken $role }}
- name: AWS_ROLE_ARN
  value: {{ $role | quote }}
- name: AWS_WEB_IDENTITY_TOKEN_FILE
  value: /var/run/secrets/fedlora/identity/token
- name: AWS_STS_REGIONAL_ENDPOINTS
  value: regional
{{- end }}
{{- end }}

{{/* The projected token's mount (workloadIdentity.projectedToken and a role). */}}
{{- define "fedlora-bank.identityMount" -}}
{{- $root := index . 0 }}{{- $role := index . 1 }}
{{- if and $root.Values.workloadIdentity.projectedToken $role }}
- name: identity-token
  mountPath: /var/run/secrets/fedlora/identity
  readOnly: true
{{- end }}
{{- end }}

{{/* The projected token's volume: a ServiceAccount token for the identity provider's audience only. */}}
{{- define "fedlora-bank.identityVolume" -}}
{{- $root := index . 0 }}{{- $role := index . 1 }}
{{- if and $root.Values.workloadIdentity.projectedToken $role }}
- name: identity-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ $root.Values.workloadIdentity.audience | quote }}
          expirationSeconds: {{ $root.Values.workloadIdentity.expirationSeconds }}
          path: token
{{- end }}
{{- end }}

{{/* The pods the default-deny policy selects: the namespace's (only when this chart created it), else this
release's own pods. */}}
{{- define "fedlora-bank.denySelector" -}}
{{- if .Values.namespace.create }}
{}
{{- else }}
matchLabels:
  {{- include "fedlora-bank.selectorLabels" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Egress to the workload identity endpoints (networkPolicy.egress.identity: STS, the instance metadata service or
the EKS Pod Identity agent), or nothing. */}}
{{- define "fedlora-bank.identityEgress" -}}
{{- $identity := .Values.networkPolicy.egress.identity | default (dict) }}
{{- if $identity.cidrs }}
# Workload identity (STS / metadata)
- to:
    {{- range $identity.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range ($identity.ports | default (list 443)) }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- end }}
