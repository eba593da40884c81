"""What logistik tells about itself: figures, metrics, tracing, alerts, logs, health."""
