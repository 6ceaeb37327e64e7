"""Code the ingress and the workers share: settings, models, providers, the queue format."""
