"""Runtime core of the allocator: actions, features, policies, the dual controller."""
