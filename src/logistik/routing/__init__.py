"""The data path: consume, route each event to its groups' models, publish, commit."""
