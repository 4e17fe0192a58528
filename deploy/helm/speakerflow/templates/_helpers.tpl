{{/*
The stage worker groups, in dataflow order. Each runs `speakerflow worker <stage>` as its
own Faust app, i.e. Kafka consumer group `speakerflow-<stage>` (pipeline/agents/app.py).
*/}}
{{- define "speakerflow.stages" -}}
segment embed cluster
{{- end -}}

{{/* The topic each stage consumes (topics/registry.py); KEDA scales on the group's lag there. */}}
{{- define "speakerflow.inputTopic" -}}
{{- $topics := dict "segment" "speakerflow.audio" "embed" "speakerflow.speech-steps" "cluster" "speakerflow.step-embeddings" -}}
{{- required (printf "no input topic known for stage %q" .) (get $topics .) -}}
{{- end -}}

{{/* Every membership change rebalances the consumer group and pauses the stage: scale down one pod at a time. */}}
{{- define "speakerflow.scaleBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: 300
  policies:
    - type: Pods
      value: 1
      periodSeconds: 120
{{- end -}}

{{- define "speakerflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Leaves room for the longest suffix appended to it ("-cluster-metrics"). */}}
{{- define "speakerflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "speakerflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "speakerflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "speakerflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "speakerflow.labels" -}}
helm.sh/chart: {{ include "speakerflow.chart" . }}
{{ include "speakerflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: speakerflow
{{- end -}}

{{- define "speakerflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "speakerflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference; call with (list $ $override) where $override may set repository, tag, pullPolicy. */}}
{{- define "speakerflow.image" -}}
{{- $root := index . 0 -}}
{{- $image := merge (deepCopy (index . 1)) $root.Values.image -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}

{{- define "speakerflow.imagePullPolicy" -}}
{{- $root := index . 0 -}}
{{- default $root.Values.image.pullPolicy (index . 1).pullPolicy -}}
{{- end -}}

{{/*
Environment every container shares. With a read-only root filesystem, the libraries'
caches (numba via librosa, torch and Hugging Face hubs, matplotlib) and Faust's data
directory must point into the /tmp emptyDir.
*/}}
{{- define "speakerflow.commonEnv" -}}
- name: SPEAKERFLOW_KAFKA
  value: {{ .Values.kafka.bootstrapServers | quote }}
{{ include "speakerflow.kafkaSecurityEnv" . }}
- name: SPEAKERFLOW_PROFILE
  value: {{ .Values.profile | quote }}
- name: PYANNOTE_METRICS_ENABLED
  value: "0"
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: NUMBA_CACHE_DIR
  value: /tmp/numba
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: FAUST_DATADIR
  value: /tmp/faust
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "speakerflow.podSecurity" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "speakerflow.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/*
How every container reaches Kafka (pipeline/settings.py KafkaSecurity). With SASL_SSL the login
comes from an existing Secret: the user name as a variable, the password as a mounted file
(SPEAKERFLOW_KAFKA_PASSWORD_FILE), so it never shows in the pod spec and a rotated secret
reaches the next connection. The CA and an optional client certificate are mounted as files.
*/}}
{{- define "speakerflow.kafkaSecurityEnv" -}}
{{- $k := .Values.kafka -}}
- name: SPEAKERFLOW_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if eq $k.securityProtocol "SASL_SSL" }}
- name: SPEAKERFLOW_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: SPEAKERFLOW_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.secretName is required with kafka.securityProtocol SASL_SSL" $k.sasl.secretName | quote }}
      key: {{ $k.sasl.usernameKey | quote }}
- name: SPEAKERFLOW_KAFKA_PASSWORD_FILE
  value: /etc/speakerflow/kafka-login/password
{{- if $k.tls.caSecretName }}
- name: SPEAKERFLOW_KAFKA_CA_FILE
  value: /etc/speakerflow/kafka-ca/ca.crt
{{- end }}
{{- if $k.tls.clientCertSecretName }}
- name: SPEAKERFLOW_KAFKA_CERT_FILE
  value: /etc/speakerflow/kafka-client/tls.crt
- name: SPEAKERFLOW_KAFKA_KEY_FILE
  value: /etc/speakerflow/kafka-client/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* The mounts of the files kafkaSecurityEnv names; nothing for PLAINTEXT. */}}
{{- define "speakerflow.kafkaVolumeMounts" -}}
{{- $k := .Values.kafka -}}
{{- if eq $k.securityProtocol "SASL_SSL" }}
- name: kafka-login
  mountPath: /etc/speakerflow/kafka-login
  readOnly: true
{{- if $k.tls.caSecretName }}
- name: kafka-ca
  mountPath: /etc/speakerflow/kafka-ca
  readOnly: true
{{- end }}
{{- if $k.tls.clientCertSecretName }}
- name: kafka-client
  mountPath: /etc/speakerflow/kafka-client
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "speakerflow.kafkaVolumes" -}}
{{- $k := .Values.kafka -}}
{{- if eq $k.securityProtocol "SASL_SSL" }}
- name: kafka-login
  secret:
    secretName: {{ $k.sasl.secretName | quote }}
    items:
      - key: {{ $k.sasl.passwordKey | quote }}
        path: password
{{- if $k.tls.caSecretName }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecretName | quote }}
    items:
      - key: {{ $k.tls.caKey | quote }}
        path: ca.crt
{{- end }}
{{- if $k.tls.clientCertSecretName }}
- name: kafka-client
  secret:
    secretName: {{ $k.tls.clientCertSecretName | quote }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end -}}

{{/* KEDA's name for a SASL mechanism (its kafka scaler's `sasl`). */}}
{{- define "speakerflow.kedaSasl" -}}
{{- $names := dict "SCRAM-SHA-512" "scram_sha512" "SCRAM-SHA-256" "scram_sha256" "PLAIN" "plaintext" -}}
{{- get $names . -}}
{{- end -}}
