"""Device ingest: DICOM C-STORE receiver, HTTPS upload, MQTT vitals, and the content-addressed store."""
