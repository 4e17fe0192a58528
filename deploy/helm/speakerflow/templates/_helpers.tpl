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
