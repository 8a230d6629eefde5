"""The client protocols the gateway speaks: how each one writes its answers."""
