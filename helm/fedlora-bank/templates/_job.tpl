{{/*
The trainer Job template: a batch/v1 Job without a name. The bank's agent (agent-cronjob.yaml) reads it from the
job-template ConfigMap (fedlora.kube.job_template), sets the name, labels, the trainer's args and the
FEDLORA_REQUEST_* environment (run, bank, round and the run's config only), and creates the Job in this
namespace. Everything else is decided here.
*/}}
{{- define "fedlora-bank.job" -}}
apiVersion: batch/v1
kind: Job
metadata:
  labels:
    {{- include "fedlora-bank.trainerLabels" . | nindent 4 }}
    {{- with .Values.jobTemplate.jobLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $skips := include "fedlora-bank.imageSkips" . | fromYamlArray }}
  {{- if or .Values.store.existingSecret .Values.data.bucket.existingSecret .Values.data.splitKey.existingSecret }}
  {{- $skips = append $skips "CKV_K8S_35=static S3 keys reach the AWS SDK as env from an existing Secret by secretKeyRef (never literal); prefer workload identity via serviceAccount.annotations" }}
  {{- end }}
  {{- if $skips }}
  annotations:
    {{- range $i, $skip := $skips }}
    checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
    {{- end }}
  {{- end }}
spec:
  backoffLimit: {{ .Values.jobTemplate.backoffLimit }}
  {{- if not (kindIs "invalid" .Values.jobTemplate.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ .Values.jobTemplate.ttlSecondsAfterFinished }}
  {{- end }}
  {{- if not (kindIs "invalid" .Values.jobTemplate.activeDeadlineSeconds) }}
  activeDeadlineSeconds: {{ .Values.jobTemplate.activeDeadlineSeconds }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "fedlora-bank.trainerLabels" . | nindent 8 }}
        {{- include "fedlora-bank.meshLabels" . | nindent 8 }}
        {{- with .Values.jobTemplate.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $annotations := merge (dict) (.Values.jobTemplate.podAnnotations | default (dict)) (include "fedlora-bank.meshLabels" . | fromYaml) }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "fedlora-bank.serviceAccountName" . }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with .Values.jobTemplate.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with .Values.jobTemplate.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: {{ .Values.trainer.runAsUser }}
        runAsGroup: {{ .Values.trainer.runAsGroup }}
        fsGroup: {{ .Values.trainer.fsGroup }}
        seccompProfile:
          type: RuntimeDefault
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.trainer.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.trainer.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.trainer.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: trainer
          image: {{ include "fedlora-bank.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          env:
            - name: FEDLORA_BANK_NAME
              value: {{ .Values.bank.name | quote }}
            - name: FEDLORA_BANK_DATA
              value: {{ include "fedlora-bank.dataPath" . | quote }}
            {{- if eq .Values.data.source "bucket" }}
            {{- with .Values.data.bucket.endpointUrl }}
            - name: FEDLORA_BANK_DATA_ENDPOINT_URL
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.data.bucket.region }}
            - name: FEDLORA_BANK_DATA_REGION
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.data.bucket.existingSecret }}
            - name: FEDLORA_BANK_DATA_AWS_ACCESS_KEY_ID
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $.Values.data.bucket.accessKeyIdKey }}
            - name: FEDLORA_BANK_DATA_AWS_SECRET_ACCESS_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $.Values.data.bucket.secretAccessKeyKey }}
            {{- end }}
            {{- end }}
            {{- include "fedlora-bank.storeEnv" . | nindent 12 }}
            - name: HOME
              value: /tmp
            - name: XDG_CACHE_HOME
              value: /cache
            - name: HF_HOME
              value: /cache/huggingface
            - name: FEDLORA_CACHE
              value: /cache/fedlora
            - name: MPLCONFIGDIR
              value: /tmp/matplotlib
            - name: HF_HUB_OFFLINE
              value: "1"
            {{- with include "fedlora-bank.modelCache" . }}
            - name: HF_HUB_CACHE
              value: {{ . | quote }}
            {{- end }}
            {{- $policy := deepCopy .Values.privacyPolicy }}
            {{- if not (hasKey $policy "maxDelta") }}{{- $_ := set $policy "maxDelta" nil }}{{- end }}
            - name: FEDLORA_BANK_POLICY
              value: {{ $policy | toJson | quote }}
            - name: FEDLORA_BANK_LEDGER
              value: {{ include "fedlora-bank.ledger" . | quote }}
            - name: FEDLORA_BANK_DATASET_ID
              value: {{ .Values.ledger.datasetId | quote }}
            {{- with .Values.data.rowKeyColumn }}
            - name: FEDLORA_BANK_ROW_KEY_COLUMN
              value: {{ . | quote }}
            {{- end }}
            {{- with .Values.data.splitKey.existingSecret }}
            - name: FEDLORA_BANK_SPLIT_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $.Values.data.splitKey.key }}
            {{- end }}
            {{- with include "fedlora-bank.caEnv" . | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with include "fedlora-bank.identityEnv" (list . .Values.workloadIdentity.trainerRoleArn) | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- range .Values.trainer.extraEnv }}
            - name: {{ .name }}
              value: {{ .value | quote }}
            {{- end }}
          resources:
            {{- toYaml .Values.trainer.resources | nindent 12 }}
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            privileged: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
            seccompProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: cache
              mountPath: /cache
            {{- if eq .Values.data.source "pvc" }}
            - name: bank-data
              mountPath: /data/bank
              readOnly: true
            {{- end }}
            {{- if eq .Values.model.source "pvc" }}
            - name: model
              mountPath: /models
              readOnly: true
            {{- end }}
            {{- if include "fedlora-bank.ledgerClaim" . }}
            - name: ledger
              mountPath: /var/lib/fedlora/ledger
            {{- end }}
            {{- if .Values.caBundle.configMap }}
            - name: ca-bundle
              mountPath: /etc/fedlora/ca
              readOnly: true
            {{- end }}
            {{- with include "fedlora-bank.identityMount" (list . .Values.workloadIdentity.trainerRoleArn) | trim }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
            {{- with .Values.scratch.medium }}
            medium: {{ . }}
            {{- end }}
        - name: cache
          emptyDir:
            sizeLimit: {{ .Values.scratch.cacheSizeLimit }}
            {{- with .Values.scratch.medium }}
            medium: {{ . }}
            {{- end }}
        {{- if eq .Values.data.source "pvc" }}
        - name: bank-data
          persistentVolumeClaim:
            claimName: {{ .Values.data.pvc.claimName }}
            readOnly: true
        {{- end }}
        {{- if eq .Values.model.source "pvc" }}
        - name: model
          persistentVolumeClaim:
            claimName: {{ .Values.model.pvc.claimName }}
            readOnly: true
        {{- end }}
        {{- with include "fedlora-bank.ledgerClaim" . }}
        - name: ledger
          persistentVolumeClaim:
            claimName: {{ . }}
        {{- end }}
        {{- with .Values.caBundle.configMap }}
        - name: ca-bundle
          configMap:
            name: {{ . }}
        {{- end }}
        {{- with include "fedlora-bank.identityVolume" (list . .Values.workloadIdentity.trainerRoleArn) | trim }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end }}
