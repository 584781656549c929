"""The Faust worker: the app's wiring, the direct topic, Faust patches and monitor, web, logs."""
