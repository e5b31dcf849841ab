{{- define "oomtrace.labels" -}}
app.kubernetes.io/name: oomtrace
{{- end -}}
