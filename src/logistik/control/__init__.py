"""The control plane: the handler store, operator actions, Consul discovery."""
