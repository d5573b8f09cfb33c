"""The HTTP ingress: authenticate, bound, wrap, make durable, answer."""
