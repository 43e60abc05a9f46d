{{- define "petrel.name" -}}{{ .Release.Name }}-petrel{{- end -}}
{{- define "petrel.labels" -}}
app.kubernetes.io/name: petrel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "petrel.storeSecret" -}}{{ .Values.store.existingSecret | default (printf "%s-store" (include "petrel.name" .)) }}{{- end -}}
{{- define "petrel.masterSecret" -}}{{ .Values.masterKey.existingSecret | default (printf "%s-master-key" (include "petrel.name" .)) }}{{- end -}}
